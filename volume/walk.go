package volume

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// cipherEntry is one entry a walk of the cipher dir found.
type cipherEntry struct {
	// dir is the open directory that holds the entry: open the entry
	// relative to it (safeopen.OpenAt), never by path.
	dir *os.File
	// name is the entry's name in dir, rel its path below the cipher dir.
	name, rel string
	// typ is the entry's type as the directory lists it.
	typ fs.FileMode
}

// cipherWalk walks a cipher dir, which untrusted storage controls: every
// directory is opened relative to its parent's descriptor and never
// through a symbolic link, so a planted link or a directory swapped for
// one cannot lead the walk outside the cipher dir. Status and Fsck share
// it.
type cipherWalk struct {
	// visit is called for every entry but kmsfs.conf at the root; the
	// walk enters a directory when visit returns true for it.
	visit func(e cipherEntry) (enter bool, err error)
	// dirErr is called for a directory that does not open; its error,
	// if any, ends the walk.
	dirErr func(rel string, err error) error
}

// run walks the cipher dir at root depth first until ctx is done.
func (w cipherWalk) run(ctx context.Context, root string) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("volume: open cipher dir %s: %w", root, err)
	}
	return w.dir(ctx, root, os.NewFile(uintptr(fd), root), "")
}

// dir walks the open directory d, named rel, and closes it.
func (w cipherWalk) dir(ctx context.Context, root string, d *os.File, rel string) error {
	defer d.Close()
	for {
		ents, err := d.ReadDir(256)
		for _, de := range ents {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("volume: scan %s: %w", root, err)
			}
			if rel == "" && de.Name() == ConfName {
				continue
			}
			e := cipherEntry{dir: d, name: de.Name(), rel: path.Join(rel, de.Name()), typ: de.Type()}
			enter, err := w.visit(e)
			if err != nil {
				return err
			}
			if !enter || !e.typ.IsDir() {
				continue
			}
			sub, _, err := e.open(unix.O_DIRECTORY, unix.S_IFDIR)
			if err != nil {
				if err := w.dirErr(e.rel, err); err != nil {
					return err
				}
				continue
			}
			if err := w.dir(ctx, root, sub, e.rel); err != nil {
				return err
			}
		}
		if err == io.EOF || len(ents) == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("volume: read directory %s: %w", path.Join(root, rel), err)
		}
	}
}

// open opens the entry read-only, relative to its directory, if it is of
// type want (unix.S_IFREG or unix.S_IFDIR), and returns its size; see
// safeopen.OpenAt.
func (e cipherEntry) open(flags int, want uint32) (*os.File, int64, error) {
	fd, st, err := safeopen.OpenAt(int(e.dir.Fd()), e.name, unix.O_RDONLY|flags, want)
	if err != nil {
		return nil, 0, err
	}
	return os.NewFile(uintptr(fd), e.rel), st.Size, nil
}

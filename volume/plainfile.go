package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
	"github.com/kmsfs/kmsfs/internal/safeopen"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

// ErrPlainPath means a plain path given to EncryptPath or OpenPath is not
// one a mount could show: empty, absolute, with an empty, "." or ".."
// component, or naming a file kmsfs keeps for itself.
var ErrPlainPath = errors.New("volume: not a plain path of the volume")

// ErrNoFile means no file of the volume is at a plain path. With
// encrypted names that includes an entry whose backing name was made in
// another directory and moved here in the cipher dir: its name
// authenticates only under the directory it was made in, so it does not
// resolve.
var ErrNoFile = errors.New("volume: no such file in the volume")

// ErrNamesNeedKey means a volume with encrypted names was opened with only
// a public key (Options.PublicKeyFile): its name key cannot be unwrapped,
// so no name can be written or read by plain path.
var ErrNamesNeedKey = errors.New("volume: the volume encrypts names, and its name key cannot be unwrapped with a public key only")

// newDirMode is the mode of the directories EncryptPath makes on the way
// to its file, as mkdir -p under the usual umask.
const newDirMode = 0o755

// plainDirFD is an open directory of the cipher dir reached by plain path,
// with its ID (zero with plaintext names).
type plainDirFD struct {
	fd int
	id names.DirID
}

// plainWalk resolves plain paths of one volume to its backing entries,
// the way a mount does: each component encrypted under its directory's ID
// (with encrypted names), every entry opened relative to its directory's
// descriptor without following a link. codec is nil with plaintext names.
type plainWalk struct {
	v     *Volume
	codec *names.Codec
	root  names.DirID
}

// walker returns the plain-path resolver of v, or why there is none.
func (v *Volume) walker() (*plainWalk, error) {
	if v.encNames && v.wrapOnly {
		return nil, fmt.Errorf("%w: a host with --public-key-file writes only into volumes made with kmsfs init --plaintext-names, or writes cipher files with -o outside the cipher dir for a host with the name key to place", ErrNamesNeedKey)
	}
	c, root, err := v.NameCodec()
	if err != nil {
		return nil, err
	}
	return &plainWalk{v: v, codec: c, root: root}, nil
}

// splitPlain checks rel and splits it into its components.
func (w *plainWalk) splitPlain(rel string) ([]string, error) {
	if rel == "" || strings.HasPrefix(rel, "/") {
		return nil, fmt.Errorf("%w: %q must be relative to the volume's root, as seen in a mount", ErrPlainPath, rel)
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("%w: %q has an empty, \".\" or \"..\" component", ErrPlainPath, rel)
		}
		if len(p) > names.MaxNameLen {
			return nil, fmt.Errorf("%w: a name in %q is longer than %d bytes", ErrPlainPath, rel, names.MaxNameLen)
		}
	}
	if w.codec == nil {
		switch parts[0] {
		case volconf.Name, volconf.JournalName, volconf.NamesName:
			return nil, fmt.Errorf("%w: %s is kmsfs's own file", ErrPlainPath, parts[0])
		}
		if strings.HasPrefix(parts[len(parts)-1], namestore.TmpPrefix) {
			return nil, fmt.Errorf("%w: %q is the name of a temporary file", ErrPlainPath, rel)
		}
	}
	return parts, nil
}

// backing returns the stored form of name in the directory d.
func (w *plainWalk) backing(d plainDirFD, name, rel string) (names.Name, error) {
	if w.codec == nil {
		return names.Name{Backing: name}, nil
	}
	nm, err := w.codec.Encrypt(d.id, name)
	if err != nil {
		return names.Name{}, fmt.Errorf("%w: %s: %w", ErrPlainPath, rel, err)
	}
	return nm, nil
}

// dir opens the directories of parts, from the root down; with create,
// those missing are made as a mount makes them. The caller closes the
// returned descriptor.
func (w *plainWalk) dir(parts []string, create bool) (plainDirFD, error) {
	fd, err := unix.Open(w.v.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return plainDirFD{}, fmt.Errorf("volume: open cipher dir %s: %w", w.v.Dir, err)
	}
	d := plainDirFD{fd: fd, id: w.root}
	for k, name := range parts {
		rel := strings.Join(parts[:k+1], "/")
		next, err := w.subdir(d, name, rel, create)
		unix.Close(d.fd)
		if err != nil {
			return plainDirFD{}, err
		}
		d = next
	}
	return d, nil
}

// subdir opens the directory name of d, at plain path rel, making it first
// with create if it is missing.
func (w *plainWalk) subdir(d plainDirFD, name, rel string, create bool) (plainDirFD, error) {
	nm, err := w.backing(d, name, rel)
	if err != nil {
		return plainDirFD{}, err
	}
	fd, _, err := safeopen.OpenAt(d.fd, nm.Backing, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if errors.Is(err, unix.ENOENT) && create {
		if w.codec == nil {
			err = unix.Mkdirat(d.fd, nm.Backing, newDirMode)
		} else {
			err = namestore.Mkdir(d.fd, nm, newDirMode)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: made meanwhile, by a mount say
			return plainDirFD{}, fmt.Errorf("volume: make directory %s in %s: %w", rel, w.v.Dir, err)
		}
		fd, _, err = safeopen.OpenAt(d.fd, nm.Backing, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	}
	if err != nil {
		return plainDirFD{}, w.entryErr(rel, nm, err)
	}
	sub := plainDirFD{fd: fd}
	if w.codec != nil {
		if sub.id, err = namestore.ReadDirID(fd); err != nil {
			unix.Close(fd)
			return plainDirFD{}, fmt.Errorf("volume: directory %s (backing %s) of %s: its %s: %w: %w", rel, nm.Backing, w.v.Dir, names.DirIDFile, ErrNameAuth, err)
		}
	}
	return sub, nil
}

// entryErr explains why the entry nm at plain path rel did not open.
func (w *plainWalk) entryErr(rel string, nm names.Name, err error) error {
	var wt *safeopen.WrongType
	switch {
	case errors.Is(err, unix.ENOENT) && w.codec != nil:
		return fmt.Errorf("%w: %s (no entry %s in its directory of %s: missing, or moved there from another directory, where its name was encrypted)", ErrNoFile, rel, nm.Backing, w.v.Dir)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %s (in %s)", ErrNoFile, rel, w.v.Dir)
	case errors.As(err, &wt):
		return fmt.Errorf("volume: %s (backing %s in %s) %v: not followed or opened", rel, nm.Backing, w.v.Dir, wt)
	}
	return fmt.Errorf("volume: %s (backing %s in %s): %w", rel, nm.Backing, w.v.Dir, err)
}

// OpenPath opens for reading the cipher file of the volume at the plain
// path rel (slash-separated, relative to the volume's root, as a mount
// shows it), resolving each component as a mount does: with encrypted
// names, encrypted under its directory's ID, so a name that does not
// authenticate there does not resolve (ErrNoFile). No component is
// followed if it is a symbolic link. The caller closes the file; Decrypt
// reads it.
func (v *Volume) OpenPath(rel string) (*os.File, error) {
	w, err := v.walker()
	if err != nil {
		return nil, err
	}
	parts, err := w.splitPlain(rel)
	if err != nil {
		return nil, err
	}
	d, err := w.dir(parts[:len(parts)-1], false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(d.fd)
	nm, err := w.backing(d, parts[len(parts)-1], rel)
	if err != nil {
		return nil, err
	}
	fd, _, err := safeopen.OpenAt(d.fd, nm.Backing, unix.O_RDONLY, unix.S_IFREG)
	if err != nil {
		return nil, w.entryErr(rel, nm, err)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// EncryptPath encrypts src into a new cipher file of the volume at the
// plain path rel, with permission bits perm, exactly as a mount stores
// it: missing directories on the way are made (mode 0755, each complete
// with its ID before it appears), and the file is written under a
// temporary name in its directory, synced and renamed over whatever file
// was at rel, so it appears whole or not at all. A volume with encrypted
// names opened with only a public key fails with ErrNamesNeedKey before
// anything is written. ctx bounds the key call. It returns the plaintext
// size.
func (v *Volume) EncryptPath(ctx context.Context, rel string, perm os.FileMode, src io.Reader) (int64, error) {
	w, err := v.walker()
	if err != nil {
		return 0, err
	}
	parts, err := w.splitPlain(rel)
	if err != nil {
		return 0, err
	}
	d, err := w.dir(parts[:len(parts)-1], true)
	if err != nil {
		return 0, err
	}
	defer unix.Close(d.fd)
	nm, err := w.backing(d, parts[len(parts)-1], rel)
	if err != nil {
		return 0, err
	}
	tmp, err := namestore.TmpName()
	if err != nil {
		return 0, err
	}
	fd, err := unix.Openat(d.fd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return 0, fmt.Errorf("volume: write %s in %s: %w", rel, v.Dir, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	n, err := func() (int64, error) {
		n, err := v.Encrypt(ctx, f, src)
		if err != nil {
			return n, err
		}
		// The umask may have cut the bits asked for.
		if err := f.Chmod(perm.Perm()); err != nil {
			return n, fmt.Errorf("volume: write %s: %w", rel, err)
		}
		if err := f.Sync(); err != nil {
			return n, fmt.Errorf("volume: write %s: sync: %w", rel, err)
		}
		if err := namestore.WriteLongSide(d.fd, nm); err != nil {
			return n, fmt.Errorf("volume: write %s: side file of its long name: %w", rel, err)
		}
		if err := unix.Renameat(d.fd, tmp, d.fd, nm.Backing); err != nil {
			return n, fmt.Errorf("volume: write %s (backing %s in %s): %w", rel, nm.Backing, v.Dir, err)
		}
		return n, nil
	}()
	f.Close()
	if err != nil {
		unix.Unlinkat(d.fd, tmp, 0)
		return n, err
	}
	// The rename is durable only once the directory is synced.
	unix.Fsync(d.fd)
	return n, nil
}

// ErrInvisible means a cipher file would be written into the cipher dir of
// a volume with encrypted names under a name no mount shows (not the
// encrypted name of an entry of its directory): EncryptPath places a file
// by its plain path instead.
var ErrInvisible = errors.New("volume: a file at that name in the cipher dir is invisible to the mount")

// CheckCipherOutput refuses path as the place of a new cipher file when it
// lies in the cipher dir of a volume with encrypted names (symbolic links
// resolved, so a link to the cipher dir counts too) and is not the cipher
// path of a plain path: its name would not authenticate in its directory,
// and the mount would never show the file. A path outside the cipher
// dir, or any path on a volume with names in clear, passes.
func (v *Volume) CheckCipherOutput(path string) error {
	if !v.encNames {
		return nil
	}
	rel, inside, err := relInside(path, v.Dir)
	if err != nil {
		return fmt.Errorf("volume: %s: %w", path, err)
	}
	if !inside {
		return nil
	}
	// A nil resolver (no name key) or rel "" resolves to no plain path.
	if plain, err := v.plainPaths().resolve(rel); err == nil && plain != "" {
		return nil // the cipher path of plain, found with kmsfs info
	}
	return fmt.Errorf("%w: %s is in the cipher dir %s, whose names are encrypted, and is the stored name of no plain path: give the file's plain path with --path instead of -o", ErrInvisible, path, v.Dir)
}

// relInside returns path relative to the directory dir and whether it
// lies inside it, comparing real paths: path's longest existing ancestor
// has its links resolved. A path whose directory does not exist yet gives
// inside with rel "" when it would be created beneath dir.
func relInside(path, dir string) (rel string, inside bool, err error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	realDir, err := filepath.EvalSymlinks(absDir)
	if err != nil {
		return "", false, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", false, err
	}
	p, rest := filepath.Dir(abs), filepath.Base(abs)
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			r, err := filepath.Rel(realDir, filepath.Join(real, rest))
			if err != nil || r == ".." || strings.HasPrefix(r, "../") {
				return "", false, nil
			}
			if p != filepath.Dir(abs) {
				return "", true, nil // its directory is still to be made
			}
			return r, true, nil
		}
		if p == filepath.Dir(p) {
			return "", false, err
		}
		p, rest = filepath.Dir(p), filepath.Join(filepath.Base(p), rest)
	}
}

package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// WriteAtomic makes path hold what write puts into a new file, or leaves
// it as it was: write fills a temporary file next to path (same
// directory, so the rename stays on one filesystem), which is synced,
// given mode perm and renamed over path only when write returns nil; on
// any failure the temporary file is removed. A reader of path (a mount of
// the cipher dir, a backup) never sees a half-written file under the
// final name, and a failed decrypt leaves no plaintext behind. The rename
// replaces a symlink planted at path instead of writing through it.
func WriteAtomic(path string, perm os.FileMode, write func(*os.File) error) (err error) {
	if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("volume: %s is a directory: name the file to write", path)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".kmsfs-tmp-*")
	if err != nil {
		return fmt.Errorf("volume: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := write(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("volume: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("volume: write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("volume: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("volume: write %s: %w", path, err)
	}
	// The rename is durable only once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// OpenCipherFile opens the cipher file at path for reading, refusing a
// symlink (one planted in a cipher dir would make decrypt read another
// file than the one named) and anything but a regular file, which it
// never opens (see safeopen.OpenAt). The caller closes it.
func OpenCipherFile(path string) (*os.File, error) {
	fd, _, err := safeopen.OpenAt(unix.AT_FDCWD, path, unix.O_RDONLY, unix.S_IFREG)
	var wt *safeopen.WrongType
	switch {
	case errors.As(err, &wt) && wt.Mode&unix.S_IFMT == unix.S_IFLNK:
		return nil, fmt.Errorf("volume: %s is a symlink: name the cipher file itself", path)
	case errors.As(err, &wt):
		return nil, fmt.Errorf("volume: %s %v, not a regular file: %w", path, err, ErrNotKmsfsFile)
	case err != nil:
		return nil, fmt.Errorf("volume: %w", &fs.PathError{Op: "open", Path: path, Err: err})
	}
	return os.NewFile(uintptr(fd), path), nil
}

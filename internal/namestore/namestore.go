// Package namestore keeps the names of a cipher dir with encrypted names
// on disk, as envelope/names defines them: a directory's ID in its
// names.DirIDFile link, a long name's sealed form in its side file, and
// directories made whole under a temporary name. The mount (fs) and the
// offline commands (volume) both store names through it, so that a file
// written by either reads back through the other. Every call works
// relative to a directory descriptor and never follows a symbolic link.
package namestore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/safeopen"
)

const (
	// TmpPrefix starts the names of what is made under a temporary name
	// and renamed into place (directories, side files, files): it has a
	// '.', so a mount never lists it (names.IsSpecial).
	TmpPrefix = ".kmsfs-tmp-"
	// MaxSide bounds a long name's side file's read: the longest sealed
	// long name.
	MaxSide = 272
	// SideMode is the mode of kmsfs's own files next to the entries: only
	// kmsfs reads them.
	SideMode = 0o400
)

// ReadDirID reads the ID of the directory open as fd from its
// names.DirIDFile link, never followed.
func ReadDirID(fd int) (names.DirID, error) {
	buf := make([]byte, 64) // more than any ID's target: a longer one is refused whole
	m, err := unix.Readlinkat(fd, names.DirIDFile, buf)
	if err == unix.EINVAL {
		return names.DirID{}, fmt.Errorf("namestore: %s is not a symbolic link", names.DirIDFile)
	}
	if err != nil {
		return names.DirID{}, err
	}
	return names.ParseDirIDLink(string(buf[:m]))
}

// WriteDirID gives the directory open as fd its ID. It is a symbolic link
// and so needs no fsync (names.DirIDFile): the backing filesystem commits
// its making before any later rename of the directory.
func WriteDirID(fd int, id names.DirID) error {
	return unix.Symlinkat(id.LinkTarget(), fd, names.DirIDFile)
}

// TmpName returns a fresh temporary special name.
func TmpName() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("namestore: temporary name: %w", err)
	}
	return TmpPrefix + hex.EncodeToString(b[:]), nil
}

// WriteFileAt puts a file name holding data in directory dirfd, durably:
// written under a temporary name, synced, then renamed over name, so that
// name is never seen half-written.
func WriteFileAt(dirfd int, name string, data []byte) error {
	tmp, err := TmpName()
	if err != nil {
		return err
	}
	err = createFileAt(dirfd, tmp, data)
	if err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
	}
	return err
}

// createFileAt makes the new file name in directory dirfd, holding data,
// synced.
func createFileAt(dirfd int, name string, data []byte) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, SideMode)
	if err != nil {
		return err
	}
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

func writeAll(fd int, data []byte) error {
	for len(data) > 0 {
		m, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		data = data[m:]
	}
	return nil
}

// WriteLongSide writes the side file of a long name before its entry is
// made or moved in: a crash may leave a side file without its entry
// (never listed), never an entry without its side file. A short name has
// none, and WriteLongSide does nothing.
func WriteLongSide(dirfd int, nm names.Name) error {
	if nm.Side == nil {
		return nil
	}
	return WriteFileAt(dirfd, nm.Backing+names.LongSuffix, nm.Side)
}

// RemoveLongSide removes the side file of a long name whose entry is gone.
func RemoveLongSide(dirfd int, nm names.Name) {
	if nm.Side != nil {
		unix.Unlinkat(dirfd, nm.Backing+names.LongSuffix, 0)
	}
}

// ReadLongSide reads the side file of the long backing name backing in
// directory dirfd, bounded by MaxSide.
func ReadLongSide(dirfd int, backing string) ([]byte, error) {
	return safeopen.ReadSmall(dirfd, backing+names.LongSuffix, MaxSide)
}

// Mkdir makes the directory nm in directory fd, with mode, and a new ID:
// made under a temporary name, given its ID (and mode), its long name's
// side file written, then renamed into place without replacing anything
// (EEXIST if nm is taken). A crash leaves either nothing visible or the
// whole directory.
func Mkdir(fd int, nm names.Name, mode uint32) error {
	tmp, err := TmpName()
	if err != nil {
		return err
	}
	// The ID must be writable into it, whatever mode was asked.
	if err := unix.Mkdirat(fd, tmp, mode|0o700); err != nil {
		return err
	}
	dfd, err := unix.Openat(fd, tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Unlinkat(fd, tmp, unix.AT_REMOVEDIR)
		return err
	}
	defer unix.Close(dfd)
	err = func() error {
		id, err := names.NewDirID()
		if err != nil {
			return err
		}
		if err := WriteDirID(dfd, id); err != nil {
			return err
		}
		if mode&0o700 != 0o700 {
			var st unix.Stat_t
			if err := unix.Fstat(dfd, &st); err != nil {
				return err
			}
			if err := unix.Fchmod(dfd, st.Mode&0o7777&^0o700|mode&0o700); err != nil {
				return err
			}
		}
		if err := WriteLongSide(fd, nm); err != nil {
			return err
		}
		return unix.Renameat2(fd, tmp, fd, nm.Backing, unix.RENAME_NOREPLACE)
	}()
	if err != nil {
		unix.Unlinkat(dfd, names.DirIDFile, 0)
		unix.Unlinkat(fd, tmp, unix.AT_REMOVEDIR)
	}
	return err
}

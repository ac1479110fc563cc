package journal

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// ErrEntry means that where the journal expected its directory, one
// of its slot or record files, or the cipher file a record names, there is
// something else: a symbolic link, a FIFO, a socket, a device node, a
// directory, a file with other hard links, or a record that announces more
// bytes than its file holds. Such an entry is never followed, read or
// written; Open removes one found among its records and reports it
// with Dropped.
var ErrEntry = errors.New("not what the journal keeps there (not followed, read or written)")

// errNoRecord marks a slot or record file that holds no valid record: one
// that was cleared, or whose write a kill cut short. Removing it is
// routine, not worth reporting.
var errNoRecord = errors.New("no record")

// openAt is safeopen.OpenAt with a wrong type reported as ErrEntry.
func openAt(dirfd int, name string, flags int, want uint32) (int, unix.Stat_t, error) {
	fd, st, err := safeopen.OpenAt(dirfd, name, flags, want)
	var wt *safeopen.WrongType
	if errors.As(err, &wt) {
		return -1, st, fmt.Errorf("%s: %w", wt, ErrEntry)
	}
	return fd, st, err
}

// openBeneath opens the regular file at the relative path rel under the
// directory dirfd (safeopen.OpenBeneath: no symbolic link, "." or ".."),
// with a wrong type or a path that is not plain reported as ErrEntry.
func openBeneath(dirfd int, rel string, flags int) (*os.File, error) {
	fd, err := safeopen.OpenBeneath(dirfd, rel, flags, unix.S_IFREG)
	var wt *safeopen.WrongType
	if errors.As(err, &wt) || errors.Is(err, safeopen.ErrNotBeneath) {
		return nil, fmt.Errorf("%w: %w", err, ErrEntry)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// removeAt removes the entry name of the directory dirfd, whatever it is
// (unlinkat acts on a symbolic link itself, and on a name of a file with
// other hard links only); an empty directory is removed too. A name that
// is already gone is not an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == unix.EISDIR {
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	}
	if err == unix.ENOENT {
		return nil
	}
	return err
}

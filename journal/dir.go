package journal

import (
	"errors"
	"fmt"
	"os"
	"strings"

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
// directory dirfd, walking it one component at a time with openAt: no
// component may be a symbolic link, "." or "..", so the file opened is
// always beneath dirfd and never a FIFO, socket or device.
func openBeneath(dirfd int, rel string, flags int) (*os.File, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("path %q is not a plain relative path: %w", rel, ErrEntry)
		}
	}
	cur := dirfd
	defer func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}()
	for k, p := range parts {
		want, fl := uint32(unix.S_IFDIR), unix.O_RDONLY|unix.O_DIRECTORY
		if k == len(parts)-1 {
			want, fl = unix.S_IFREG, flags
		}
		fd, _, err := openAt(cur, p, fl, want)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(parts[:k+1], "/"), err)
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		cur = fd
	}
	f := os.NewFile(uintptr(cur), rel)
	cur = dirfd
	return f, nil
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

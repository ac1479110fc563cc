package journal

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
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

// fileKind names the type in mode for an error message.
func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("of unknown type %#o", mode&unix.S_IFMT)
}

// openAt opens name in the directory dirfd, which must be of type want
// (unix.S_IFREG or unix.S_IFDIR), without following a symbolic link. The
// type is checked with fstatat before the open, so that a device node is
// never opened at all (opening one can have effects of its own), and with
// fstat after it, so that an entry swapped in between is caught; the open
// itself is O_NONBLOCK so that a FIFO swapped in cannot hang it. The
// caller owns the returned descriptor.
func openAt(dirfd int, name string, flags int, want uint32) (int, unix.Stat_t, error) {
	var pre, st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &pre, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, st, err
	}
	if pre.Mode&unix.S_IFMT != want {
		return -1, pre, fmt.Errorf("is %s: %w", fileKind(pre.Mode), ErrEntry)
	}
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err == unix.ELOOP {
		return -1, st, fmt.Errorf("is %s: %w", fileKind(unix.S_IFLNK), ErrEntry)
	}
	if err != nil {
		return -1, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, err
	}
	if st.Mode&unix.S_IFMT != want || st.Dev != pre.Dev || st.Ino != pre.Ino {
		unix.Close(fd)
		return -1, st, fmt.Errorf("is %s (replaced while opened): %w", fileKind(st.Mode), ErrEntry)
	}
	return fd, st, nil
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

// Package safeopen opens entries of a directory that untrusted storage
// controls (the cipher dir): relative to the directory's descriptor,
// never through a symbolic link, never blocking on a FIFO, and never
// opening something of another type than the caller expects.
package safeopen

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// WrongType is OpenAt's refusal of an entry that is not of the type asked
// for: Mode is what was found (S_IFLNK for a symbolic link), Replaced says
// the entry changed between the check and the open. Its text starts with
// "is …", to follow the entry's name.
type WrongType struct {
	Mode     uint32
	Replaced bool
}

func (e *WrongType) Error() string {
	if e.Replaced {
		return fmt.Sprintf("is %s (replaced while opened)", Kind(e.Mode))
	}
	return "is " + Kind(e.Mode)
}

// Kind names the file type in mode for a message.
func Kind(mode uint32) string {
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

// OpenAt opens name in the directory dirfd, which must be of type want
// (unix.S_IFREG or unix.S_IFDIR), without following a symbolic link. The
// type is checked with fstatat before the open, so that a device node is
// never opened at all (opening one can have effects of its own), and with
// fstat after it, so that an entry swapped in between is caught; the open
// itself is O_NONBLOCK so that a FIFO swapped in cannot hang it. A wrong
// type fails with *WrongType; other errors are the system's (ENOENT for a
// missing name). The caller owns the returned descriptor.
func OpenAt(dirfd int, name string, flags int, want uint32) (int, unix.Stat_t, error) {
	var pre, st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &pre, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, st, err
	}
	if pre.Mode&unix.S_IFMT != want {
		return -1, pre, &WrongType{Mode: pre.Mode}
	}
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err == unix.ELOOP {
		return -1, st, &WrongType{Mode: unix.S_IFLNK}
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
		return -1, st, &WrongType{Mode: st.Mode, Replaced: true}
	}
	return fd, st, nil
}

// OpenBeneath opens the entry of type want at the relative path rel under
// the directory dirfd, walking it one component at a time with OpenAt: no
// component may be a symbolic link, "." or "..", so what is opened is
// always beneath dirfd. A component of the wrong type fails with
// *WrongType; a path that is not plain and relative fails with
// ErrNotBeneath. The caller owns the returned descriptor.
func OpenBeneath(dirfd int, rel string, flags int, want uint32) (int, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return -1, fmt.Errorf("path %q: %w", rel, ErrNotBeneath)
		}
	}
	cur := dirfd
	for k, p := range parts {
		w, fl := uint32(unix.S_IFDIR), unix.O_RDONLY|unix.O_DIRECTORY
		if k == len(parts)-1 {
			w, fl = want, flags
		}
		fd, _, err := OpenAt(cur, p, fl, w)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, fmt.Errorf("%s: %w", strings.Join(parts[:k+1], "/"), err)
		}
		cur = fd
	}
	return cur, nil
}

// ErrNotBeneath means a path given to OpenBeneath is not a plain relative
// path (empty, ".", ".." or absolute components).
var ErrNotBeneath = errors.New("not a plain relative path")

// ReadSmall reads the whole regular file name in the directory dirfd,
// opened as OpenAt does, refusing one of more than max bytes: it reads at
// most max+1 bytes, so a huge or endless file planted in its place costs
// no more than that. The returned slice is the caller's.
func ReadSmall(dirfd int, name string, max int) ([]byte, error) {
	fd, _, err := OpenAt(dirfd, name, unix.O_RDONLY, unix.S_IFREG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, max+1)
	got := 0
	for got < len(buf) {
		m, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		got += m
	}
	if got > max {
		return nil, fmt.Errorf("%s holds more than %d bytes", name, max)
	}
	return buf[:got], nil
}

package integration_test

import (
	"golang.org/x/sys/unix"

	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// steps are the file operations a test runs in a process of its own
// (fusetest.User): as another user, or as another process, since POSIX
// record locks belong to processes. A data argument "-" means standard
// input.
var steps = fusetest.Steps{
	"create": func(a []string) error {
		return stepWrite(a[0], syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, stepMode(a[1]), a[2])
	},
	"write":  func(a []string) error { return stepWrite(a[0], syscall.O_WRONLY|syscall.O_TRUNC, 0, a[1]) },
	"append": func(a []string) error { return stepWrite(a[0], syscall.O_WRONLY|syscall.O_APPEND, 0, a[1]) },
	"read": func(a []string) error {
		b, err := os.ReadFile(a[0])
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	},
	"stat": func(a []string) error {
		var st syscall.Stat_t
		if err := syscall.Lstat(a[0], &st); err != nil {
			return err
		}
		fmt.Printf("%d %d %o %d", st.Uid, st.Gid, st.Mode, st.Size)
		return nil
	},
	"mkdir":   func(a []string) error { return syscall.Mkdir(a[0], stepMode(a[1])) },
	"mkfifo":  func(a []string) error { return syscall.Mkfifo(a[0], stepMode(a[1])) },
	"symlink": func(a []string) error { return syscall.Symlink(a[0], a[1]) },
	"unlink":  func(a []string) error { return syscall.Unlink(a[0]) },
	"rmdir":   func(a []string) error { return syscall.Rmdir(a[0]) },
	"chmod":   func(a []string) error { return syscall.Chmod(a[0], stepMode(a[1])) },
	"chown": func(a []string) error {
		return syscall.Lchown(a[0], int(stepNum(a[1])), int(stepNum(a[2])))
	},
	"rename":   func(a []string) error { return syscall.Rename(a[0], a[1]) },
	"setxattr": func(a []string) error { return unix.Setxattr(a[0], a[1], nil, 0) },
	"utimes": func(a []string) error {
		ts := syscall.Timespec{Sec: stepNum(a[1])}
		return syscall.UtimesNano(a[0], []syscall.Timespec{ts, ts})
	},
	"truncate": func(a []string) error { return syscall.Truncate(a[0], stepNum(a[1])) },
	"fallocate": func(a []string) error {
		fd, err := syscall.Open(a[0], syscall.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Fallocate(fd, uint32(stepNum(a[1])), stepNum(a[2]), stepNum(a[3]))
	},
	// posixlock and flock take a lock and hold it until released.
	"posixlock": func(a []string) error {
		fd, err := syscall.Open(a[0], syscall.O_RDWR, 0)
		if err != nil {
			return err
		}
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: stepNum(a[1]), Len: stepNum(a[2])}
		if err := syscall.FcntlFlock(uintptr(fd), syscall.F_SETLK, &lk); err != nil {
			return err
		}
		fusetest.Hold()
		return nil
	},
	"flock": func(a []string) error {
		fd, err := syscall.Open(a[0], syscall.O_RDONLY, 0)
		if err != nil {
			return err
		}
		if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			return err
		}
		fusetest.Hold()
		return nil
	},
}

// stepWrite opens path with flags (and mode, for a new file) and writes
// data (stepData).
func stepWrite(path string, flags int, mode uint32, data string) error {
	fd, err := syscall.Open(path, flags, mode)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	_, err = syscall.Write(fd, stepData(data))
	return err
}

// stepData returns s, or standard input for "-".
func stepData(s string) []byte {
	if s != "-" {
		return []byte(s)
	}
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		stepUsage("stdin: %v", err)
	}
	return b
}

// stepMode parses an octal mode.
func stepMode(s string) uint32 {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		stepUsage("bad mode %q", s)
	}
	return uint32(m)
}

// stepNum parses a decimal number.
func stepNum(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		stepUsage("bad number %q", s)
	}
	return n
}

// stepUsage ends a step the test called wrongly; the test fails on its
// exit status.
func stepUsage(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
	os.Exit(2)
}

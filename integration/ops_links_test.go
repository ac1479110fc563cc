package integration_test

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsLink checks hard links: the same content and inode through both
// names, writes through one seen through the other, and the link survives
// rename and removal of the original and a remount.
func TestOpsLink(t *testing.T) {
	v := mntOps(t)
	if err := os.Mkdir(v.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := mntRandom(30, 10000)
	mntWriteFile(t, v.Path("orig"), data)
	if err := os.Link(v.Path("orig"), v.Path("d/link")); err != nil {
		t.Fatal(err)
	}
	a, b := mntLstat(t, v.Path("orig")), mntLstat(t, v.Path("d/link"))
	if a.Ino != b.Ino || a.Nlink != 2 || b.Nlink != 2 || b.Size != int64(len(data)) {
		t.Fatalf("inodes %d/%d nlink %d/%d size %d, want one inode, nlink 2, size %d", a.Ino, b.Ino, a.Nlink, b.Nlink, b.Size, len(data))
	}
	mntCheckFile(t, v.Path("d/link"), data)
	// Written through one name, read through the other.
	f := mntOpen(t, v.Path("d/link"), os.O_RDWR, 0)
	if _, err := f.WriteAt([]byte("through the link"), 4090); err != nil {
		t.Fatal(err)
	}
	f.Close()
	copy(data[4090:], "through the link")
	mntCheckFile(t, v.Path("orig"), data)
	if err := os.Rename(v.Path("orig"), v.Path("d/renamed")); err != nil {
		t.Fatal(err)
	}
	mntCheckFile(t, v.Path("d/link"), data)
	if err := os.Remove(v.Path("d/renamed")); err != nil {
		t.Fatal(err)
	}
	mntCheckFile(t, v.Path("d/link"), data)
	if st := mntLstat(t, v.Path("d/link")); st.Nlink != 1 {
		t.Fatalf("nlink %d after removing the other name", st.Nlink)
	}
	if err := os.Link(v.Path("d/link"), v.Path("again")); err != nil {
		t.Fatal(err)
	}
	v.Remount(t)
	mntCheckFile(t, v.Path("again"), data)
	mntCheckFile(t, v.Path("d/link"), data)
	mntWantErrno(t, "link over an existing name", os.Link(v.Path("again"), v.Path("d/link")), syscall.EEXIST)
	mntWantErrno(t, "link a dir", os.Link(v.Path("d"), v.Path("d2")), syscall.EPERM)
}

// TestOpsSymlink checks symlink and readlink: targets stored exactly
// (relative, absolute, dangling, long), followed through the mount, and
// reading a link's attributes leaves its atime alone.
func TestOpsSymlink(t *testing.T) {
	v := mntOps(t)
	mntWriteFile(t, v.Path("target"), []byte("pointed at"))
	for _, c := range []struct{ name, target string }{
		{"relative", "target"}, {"absolute", "/etc/hostname"}, {"dangling", "../no/such"},
		{"long", strings.Repeat("abcdefgh/", 400) + "x"}, {"odd", "sp ace/\tä"},
	} {
		t.Run("target="+c.name, func(t *testing.T) {
			p := v.Path("link-" + c.name)
			if err := os.Symlink(c.target, p); err != nil {
				t.Fatal(err)
			}
			got, err := os.Readlink(p)
			if err != nil || got != c.target {
				t.Fatalf("readlink: %q, %v", got, err)
			}
			if st := mntLstat(t, p); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(c.target)) {
				t.Fatalf("lstat: mode %o size %d", st.Mode, st.Size)
			}
		})
	}
	mntCheckFile(t, v.Path("link-relative"), []byte("pointed at"))
	_, err := os.ReadFile(v.Path("link-dangling"))
	mntWantErrno(t, "read through a dangling link", err, syscall.ENOENT)
	_, err = os.Readlink(v.Path("target"))
	mntWantErrno(t, "readlink of a file", err, syscall.EINVAL)
	mntWantErrno(t, "symlink over an existing name", os.Symlink("x", v.Path("target")), syscall.EEXIST)
	t.Run("lstat-keeps-atime", func(t *testing.T) {
		p := v.Path("link-relative")
		old := unix.Timespec{Sec: 1_000_000_000}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{old, old}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		v.Remount(t) // no cached attributes
		for range 3 {
			if st := mntLstat(t, p); st.Atim != old {
				t.Fatalf("link atime %v after lstat, want %v", st.Atim, old)
			}
		}
	})
	v.Remount(t)
	if got, err := os.Readlink(v.Path("link-long")); err != nil || len(got) != 400*9+1 {
		t.Fatalf("long link after remount: %d bytes, %v", len(got), err)
	}
}

// TestOpsMknod checks mknod of a fifo, a unix socket and (as root) a
// character device: the right types and device numbers, and the fifo and
// socket work.
func TestOpsMknod(t *testing.T) {
	v := mntOps(t)
	mntUmask(t, 0o022)
	t.Run("fifo", func(t *testing.T) {
		p := v.Path("fifo")
		if err := unix.Mkfifo(p, 0o662); err != nil {
			t.Fatal(err)
		}
		if st := mntLstat(t, p); st.Mode != unix.S_IFIFO|0o640 {
			t.Fatalf("mode %o, want a fifo 0640 (0662 under umask 022)", st.Mode)
		}
		// O_RDWR opens a fifo without waiting for a peer.
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte("through the pipe")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		if n, err := unix.Read(fd, buf); err != nil || string(buf[:n]) != "through the pipe" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	})
	t.Run("socket", func(t *testing.T) {
		p := v.Path("sock")
		if len(p) >= 108 {
			t.Fatalf("bad test: socket path %s is too long for sun_path", p)
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if st := mntLstat(t, p); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			t.Fatalf("mode %o, want a socket", st.Mode)
		}
		done := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if err == nil {
				_, err = c.Write([]byte("hello"))
				c.Close()
			}
			done <- err
		}()
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatalf("connect through the mount: %v", err)
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
			t.Fatalf("read %q, %v", buf, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// mknod can make a socket node too.
		if err := unix.Mknod(v.Path("sock2"), unix.S_IFSOCK|0o600, 0); err != nil {
			t.Fatal(err)
		}
		if st := mntLstat(t, v.Path("sock2")); st.Mode != unix.S_IFSOCK|0o600 {
			t.Fatalf("mknod socket: mode %o", st.Mode)
		}
	})
	t.Run("chardev", func(t *testing.T) {
		p := v.Path("null")
		dev := unix.Mkdev(1, 3)
		if err := unix.Mknod(p, unix.S_IFCHR|0o640, int(dev)); err != nil {
			t.Fatalf("mknod as root: %v", err)
		}
		if st := mntLstat(t, p); st.Mode != unix.S_IFCHR|0o640 || st.Rdev != dev {
			t.Fatalf("mode %o rdev %#x, want a char device 0640 %#x", st.Mode, st.Rdev, dev)
		}
		if err := unix.Mknod(v.Path("blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))); err != nil {
			t.Fatalf("mknod block device: %v", err)
		}
		if st := mntLstat(t, v.Path("blk")); st.Mode != unix.S_IFBLK|0o600 || st.Rdev != unix.Mkdev(7, 0) {
			t.Fatalf("block device: mode %o rdev %#x", st.Mode, st.Rdev)
		}
	})
	t.Run("regular", func(t *testing.T) {
		// mknod of a regular file makes an empty file that works.
		p := v.Path("plain")
		if err := unix.Mknod(p, unix.S_IFREG|0o644, 0); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, p, []byte{})
		mntWriteFile(t, p, []byte("now with content"))
		v.Remount(t)
		mntCheckFile(t, p, []byte("now with content"))
		if st := mntLstat(t, v.Path("null")); st.Rdev != unix.Mkdev(1, 3) {
			t.Fatalf("device after remount: rdev %#x", st.Rdev)
		}
	})
}

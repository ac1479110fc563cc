package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestOpsCreate checks create: modes under the umask, O_EXCL, names, and
// that an empty new file stays empty and readable across a remount.
func TestOpsCreate(t *testing.T) {
	v := mntOps(t)
	mntUmask(t, 0o022)
	for _, c := range []struct{ perm, want uint32 }{{0o666, 0o644}, {0o600, 0o600}, {0o755, 0o755}, {0o4755, 0o4755}, {0o2755, 0o2755}, {0, 0}} {
		t.Run(fmt.Sprintf("perm=%04o", c.perm), func(t *testing.T) {
			p := v.Path(fmt.Sprintf("mode-%o", c.perm))
			fd, err := unix.Open(p, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, c.perm)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != unix.S_IFREG|c.want || st.Size != 0 || st.Uid != 0 || st.Gid != 0 {
				t.Fatalf("new file: mode %o size %d owner %d:%d, want %o, 0, 0:0", st.Mode, st.Size, st.Uid, st.Gid, unix.S_IFREG|c.want)
			}
			// The descriptor is read-write whatever the mode says.
			if _, err := unix.Pwrite(fd, []byte("abc"), 0); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 8)
			if n, err := unix.Pread(fd, buf, 0); err != nil || string(buf[:n]) != "abc" {
				t.Fatalf("read back %q, %v", buf[:n], err)
			}
		})
	}
	t.Run("excl", func(t *testing.T) {
		mntWriteFile(t, v.Path("exists"), []byte("keep"))
		_, err := os.OpenFile(v.Path("exists"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		mntWantErrno(t, "O_EXCL on an existing file", err, syscall.EEXIST)
		mntCheckFile(t, v.Path("exists"), []byte("keep"))
		// O_CREAT without O_EXCL opens it as it is.
		f := mntOpen(t, v.Path("exists"), os.O_CREATE|os.O_RDWR, 0o600)
		f.Close()
		mntCheckFile(t, v.Path("exists"), []byte("keep"))
	})
	t.Run("names", func(t *testing.T) {
		_, err := os.Create(v.Path("no/such/dir/f"))
		mntWantErrno(t, "create in a missing dir", err, syscall.ENOENT)
		long := strings.Repeat("n", 255)
		mntWriteFile(t, v.Path(long), []byte("long name"))
		mntCheckFile(t, v.Path(long), []byte("long name"))
		_, err = os.Create(v.Path(long + "x"))
		mntWantErrno(t, "a 256-byte name", err, syscall.ENAMETOOLONG)
		odd := "sp ace\tand\nnewline-é-\x01"
		mntWriteFile(t, v.Path(odd), []byte("odd"))
		mntCheckFile(t, v.Path(odd), []byte("odd"))
	})
	t.Run("tmpfile", func(t *testing.T) {
		// Not supported, and said so with the errno that makes callers
		// fall back to a named file; or supported and working.
		fd, err := unix.Open(v.Mnt, unix.O_TMPFILE|unix.O_RDWR, 0o600)
		if err != nil {
			mntWantErrno(t, "O_TMPFILE", err, syscall.EOPNOTSUPP)
			return
		}
		defer unix.Close(fd)
		if _, err := unix.Pwrite(fd, []byte("tmp"), 0); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 3)
		if _, err := unix.Pread(fd, buf, 0); err != nil || string(buf) != "tmp" {
			t.Fatalf("O_TMPFILE read back %q, %v", buf, err)
		}
	})
	t.Run("empty-after-remount", func(t *testing.T) {
		for _, name := range []string{"empty-closed", "empty-truncated"} {
			f, err := os.Create(v.Path(name))
			if err != nil {
				t.Fatal(err)
			}
			if name == "empty-truncated" {
				f.Write([]byte("gone"))
				f.Truncate(0)
			}
			f.Close()
		}
		v.Remount(t)
		for _, name := range []string{"empty-closed", "empty-truncated"} {
			mntCheckFile(t, v.Path(name), []byte{})
		}
		mntCheckFile(t, v.Path("exists"), []byte("keep"))
	})
}

// TestOpsOpen checks open flags: O_TRUNC, O_APPEND (appends land at the
// end, whoever else extended the file), O_WRONLY (partial-block writes
// need a read the caller may not do), O_RDONLY, directories and links.
func TestOpsOpen(t *testing.T) {
	v := mntOps(t)
	t.Run("trunc", func(t *testing.T) {
		p := v.Path("trunc")
		mntWriteFile(t, p, mntRandom(1, 10000))
		other := mntOpen(t, p, os.O_RDONLY, 0)
		f := mntOpen(t, p, os.O_WRONLY|os.O_TRUNC, 0)
		if st := mntLstat(t, p); st.Size != 0 {
			t.Fatalf("size %d after O_TRUNC", st.Size)
		}
		if _, err := f.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		// A handle opened before sees the cut and the new bytes.
		got, err := io.ReadAll(other)
		if err != nil || string(got) != "abc" {
			t.Fatalf("other handle reads %q, %v", got, err)
		}
		f.Close()
		other.Close()
		mntCheckFile(t, p, []byte("abc"))
	})
	t.Run("append", func(t *testing.T) {
		p := v.Path("append")
		mntWriteFile(t, p, []byte("hello"))
		a := mntOpen(t, p, os.O_WRONLY|os.O_APPEND, 0)
		b := mntOpen(t, p, os.O_RDWR, 0)
		want := []byte("hello")
		if _, err := a.Write([]byte(" world")); err != nil {
			t.Fatal(err)
		}
		want = append(want, " world"...)
		// Another handle extends the file past a block boundary.
		if _, err := b.WriteAt([]byte("X"), 5000); err != nil {
			t.Fatal(err)
		}
		want = append(append(want, make([]byte, 5000-len(want))...), 'X')
		if _, err := a.Write([]byte("!")); err != nil {
			t.Fatal(err)
		}
		want = append(want, '!')
		// Linux appends even at an explicit offset on an O_APPEND handle.
		if _, err := unix.Pwrite(int(a.Fd()), []byte("Z"), 0); err != nil {
			t.Fatal(err)
		}
		want = append(want, 'Z')
		mntCheckFile(t, p, want)
		a.Close()
		b.Close()
		v.Remount(t)
		mntCheckFile(t, p, want)
	})
	t.Run("wronly-partial-blocks", func(t *testing.T) {
		p := v.Path("wronly")
		model := mntRandom(2, 10000)
		mntWriteFile(t, p, model)
		f := mntOpen(t, p, os.O_WRONLY, 0)
		for _, w := range []struct {
			off  int64
			data string
		}{{4094, "abc"}, {0, "A"}, {9999, "Z"}, {8191, "mid"}, {10000, "tail"}} {
			if _, err := f.WriteAt([]byte(w.data), w.off); err != nil {
				t.Fatalf("write at %d: %v", w.off, err)
			}
			model = append(model[:min(int(w.off), len(model))], append([]byte(w.data), model[min(int(w.off)+len(w.data), len(model)):]...)...)
		}
		_, err := f.Read(make([]byte, 1))
		mntWantErrno(t, "read on an O_WRONLY handle", err, syscall.EBADF)
		f.Close()
		mntCheckFile(t, p, model)
	})
	t.Run("rdonly", func(t *testing.T) {
		p := v.Path("rdonly")
		mntWriteFile(t, p, []byte("read me"))
		f := mntOpen(t, p, os.O_RDONLY, 0)
		_, err := f.Write([]byte("x"))
		mntWantErrno(t, "write on an O_RDONLY handle", err, syscall.EBADF)
		got, err := io.ReadAll(f)
		if err != nil || string(got) != "read me" {
			t.Fatalf("read %q, %v", got, err)
		}
	})
	t.Run("dir-and-symlink", func(t *testing.T) {
		if err := os.Mkdir(v.Path("d"), 0o755); err != nil {
			t.Fatal(err)
		}
		d := mntOpen(t, v.Path("d"), os.O_RDONLY, 0)
		d.Close()
		_, err := os.OpenFile(v.Path("d"), os.O_WRONLY, 0)
		mntWantErrno(t, "open a dir for writing", err, syscall.EISDIR)
		if err := os.Symlink("rdonly", v.Path("sym")); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.Path("sym"), []byte("read me"))
		_, err = os.OpenFile(v.Path("sym"), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		mntWantErrno(t, "O_NOFOLLOW on a symlink", err, syscall.ELOOP)
	})
}

// TestOpsReadWrite checks reads at block boundaries and past the end, and
// a seeded run of writes and truncates against an in-memory model.
func TestOpsReadWrite(t *testing.T) {
	v := mntOps(t)
	const size = 3*4096 + 100
	data := mntRandom(3, size)
	mntWriteFile(t, v.Path("reads"), data)
	f, err := os.Open(v.Path("reads"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int }{
		{0, 1}, {0, size}, {4095, 2}, {4096, 4096}, {4000, 9000}, {size - 1, 10}, {size, 10}, {size + 100, 10}, {1, 1 << 20},
	} {
		t.Run(fmt.Sprintf("read,off=%d,len=%d", c.off, c.n), func(t *testing.T) {
			buf := make([]byte, c.n)
			n, err := f.ReadAt(buf, int64(c.off))
			want := data[min(c.off, size):min(c.off+c.n, size)]
			if err != nil && !(errors.Is(err, io.EOF) && n < c.n) {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], want) {
				t.Fatalf("read: %s", mntDiff(buf[:n], want))
			}
		})
	}
	f.Close()
	t.Run("write-model", func(t *testing.T) {
		p := v.Path("model")
		w := mntOpen(t, p, os.O_CREATE|os.O_RDWR, 0o644)
		rng := rand.New(rand.NewPCG(5, 5))
		var model []byte
		for i := range 400 {
			switch op := rng.IntN(10); {
			case op < 8: // write anywhere up to a little past the end
				off := rng.IntN(len(model) + 6000)
				n := 1 + rng.IntN(9000)
				if rng.IntN(4) == 0 {
					n = 1 + rng.IntN(20)
				}
				b := mntRandom(uint64(i), n)
				if _, err := w.WriteAt(b, int64(off)); err != nil {
					t.Fatalf("op %d: write %d at %d: %v", i, n, off, err)
				}
				if off+n > len(model) {
					model = append(model, make([]byte, off+n-len(model))...)
				}
				copy(model[off:], b)
			default:
				n := rng.IntN(len(model) + 5000)
				if err := w.Truncate(int64(n)); err != nil {
					t.Fatalf("op %d: truncate to %d: %v", i, n, err)
				}
				if n <= len(model) {
					model = model[:n]
				} else {
					model = append(model, make([]byte, n-len(model))...)
				}
			}
			if i%25 == 0 {
				mntCheckFile(t, p, model)
			}
		}
		w.Close()
		v.Remount(t)
		mntCheckFile(t, p, model)
	})
}

// TestOpsFlushFsyncRelease checks close and dup (flush), fsync and
// fdatasync on files and dirs, and release: all handles of an inode share
// one backing descriptor in the daemon, closed with the last handle.
func TestOpsFlushFsyncRelease(t *testing.T) {
	v := mntOps(t)
	t.Run("flush", func(t *testing.T) {
		f := mntOpen(t, v.Path("flushed"), os.O_CREATE|os.O_RDWR, 0o644)
		if _, err := f.Write([]byte("one")); err != nil {
			t.Fatal(err)
		}
		dup, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Close(dup); err != nil { // a flush, not a release
			t.Fatalf("close of a dup: %v", err)
		}
		if _, err := f.Write([]byte(" two")); err != nil {
			t.Fatalf("write after a dup was closed: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		mntCheckFile(t, v.Path("flushed"), []byte("one two"))
	})
	t.Run("fsync", func(t *testing.T) {
		f := mntOpen(t, v.Path("synced"), os.O_CREATE|os.O_RDWR, 0o644)
		if _, err := f.Write(mntRandom(4, 9000)); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("fsync: %v", err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			t.Fatalf("fdatasync: %v", err)
		}
		d := mntOpen(t, v.Mnt, os.O_RDONLY, 0)
		if err := d.Sync(); err != nil {
			t.Fatalf("fsync of a dir: %v", err)
		}
	})
	t.Run("release", func(t *testing.T) {
		p := v.Path("shared")
		mntWriteFile(t, p, mntRandom(5, 5000))
		v.WaitReleased(t, "shared")
		var fs []*os.File
		for _, flag := range []int{os.O_RDONLY, os.O_RDWR, os.O_WRONLY} {
			fs = append(fs, mntOpen(t, p, flag, 0))
		}
		if held := v.DaemonHolds(t, "shared"); len(held) != 1 {
			t.Fatalf("three handles open: the daemon holds %d descriptors of the file, want 1 (shared state)", len(held))
		}
		for _, f := range fs {
			f.Close()
		}
		v.WaitReleased(t, "shared")
	})
	t.Run("release-unlinked", func(t *testing.T) {
		p := v.Path("doomed")
		mntWriteFile(t, p, mntRandom(6, 70000))
		f := mntOpen(t, p, os.O_RDWR, 0)
		back := v.BackingPath(t, "doomed") // the name is gone once removed
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		// Still readable and writable through the handle.
		if _, err := f.WriteAt([]byte("more"), 70000); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := f.ReadAt(buf, 70000); err != nil || string(buf) != "more" {
			t.Fatalf("read %q, %v from an unlinked file", buf, err)
		}
		held := func() []string {
			h, err := fusetest.Holds(v.PID(), back)
			if err != nil {
				t.Fatalf("daemon descriptors: %v", err)
			}
			return h
		}
		if h := held(); len(h) != 1 {
			t.Fatalf("an unlinked file open: the daemon holds %d descriptors of it, want 1", len(h))
		}
		f.Close()
		fusetest.Eventually(t, "the mount daemon releases the unlinked file", fusetest.ExitTimeout, func() bool { return len(held()) == 0 })
	})
}

// TestOpsReadOnly checks that a --ro mount reads and refuses every change
// with EROFS.
func TestOpsReadOnly(t *testing.T) {
	v := mntOps(t)
	mntWriteFile(t, v.Path("f"), []byte("content"))
	if err := os.Mkdir(v.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	v.Unmount(t)
	v.Mount(t, "--ro", "--xattr")
	mntCheckFile(t, v.Path("f"), []byte("content"))
	for name, op := range map[string]func() error{
		"create":   func() error { _, err := os.Create(v.Path("new")); return err },
		"open-rw":  func() error { _, err := os.OpenFile(v.Path("f"), os.O_RDWR, 0); return err },
		"truncate": func() error { return os.Truncate(v.Path("f"), 0) },
		"chmod":    func() error { return os.Chmod(v.Path("f"), 0o600) },
		"mkdir":    func() error { return os.Mkdir(v.Path("d2"), 0o755) },
		"unlink":   func() error { return os.Remove(v.Path("f")) },
		"rmdir":    func() error { return os.Remove(v.Path("d")) },
		"rename":   func() error { return os.Rename(v.Path("f"), v.Path("g")) },
		"symlink":  func() error { return os.Symlink("f", v.Path("l")) },
		"setxattr": func() error { return unix.Setxattr(v.Path("f"), "user.x", []byte("x"), 0) },
	} {
		t.Run(name, func(t *testing.T) { mntWantErrno(t, name, op(), syscall.EROFS) })
	}
	mntCheckFile(t, v.Path("f"), []byte("content"))
}

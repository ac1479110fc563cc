package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestOpsGetattr checks the attributes a mount reports: plaintext sizes
// (also while a handle writes), stable inode numbers, types and link counts.
func TestOpsGetattr(t *testing.T) {
	v := mntOps(t)
	for _, size := range []int{0, 1, 4095, 4096, 4097, 2*4096 + 5, 1 << 20} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			p := v.Path(fmt.Sprintf("f%d", size))
			mntWriteFile(t, p, mntRandom(uint64(size), size))
			st := mntLstat(t, p)
			if st.Size != int64(size) || st.Mode != unix.S_IFREG|0o644 || st.Nlink != 1 || st.Uid != 0 {
				t.Fatalf("stat: size %d mode %o nlink %d uid %d, want %d, %o, 1, 0", st.Size, st.Mode, st.Nlink, st.Uid, size, unix.S_IFREG|0o644)
			}
			if again := mntLstat(t, p); again.Ino != st.Ino {
				t.Fatalf("inode number changed between two stats: %d, %d", st.Ino, again.Ino)
			}
		})
	}
	t.Run("size-while-writing", func(t *testing.T) {
		p := v.Path("growing")
		f := mntOpen(t, p, os.O_CREATE|os.O_RDWR, 0o644)
		for _, end := range []int64{1, 4096, 4097, 10000, 3 * 4096} {
			if _, err := f.WriteAt([]byte{'x'}, end-1); err != nil {
				t.Fatal(err)
			}
			var fst unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
				t.Fatal(err)
			}
			if st := mntLstat(t, p); st.Size != end || fst.Size != end {
				t.Fatalf("after writing byte %d: stat size %d, fstat size %d, want %d", end-1, st.Size, fst.Size, end)
			}
		}
	})
	t.Run("mtime-after-write", func(t *testing.T) {
		p := v.Path("touched")
		mntWriteFile(t, p, []byte("old"))
		old := unix.NsecToTimespec(1e9)
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{old, old}, 0); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, p, []byte("new content"))
		if st := mntLstat(t, p); st.Mtim.Sec <= 1 || st.Ctim.Sec <= 1 {
			t.Fatalf("mtime %v ctime %v after a write, want now", st.Mtim, st.Ctim)
		}
	})
	t.Run("dir-and-symlink", func(t *testing.T) {
		d := v.Path("dir")
		for _, sub := range []string{"dir/a", "dir/b"} {
			if err := os.MkdirAll(v.Path(sub), 0o750); err != nil {
				t.Fatal(err)
			}
		}
		if st := mntLstat(t, d); st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Nlink != 4 {
			t.Fatalf("dir with two subdirs: mode %o nlink %d, want a dir with nlink 4", st.Mode, st.Nlink)
		}
		target := strings.Repeat("t", 300)
		if err := os.Symlink(target, v.Path("link")); err != nil {
			t.Fatal(err)
		}
		if st := mntLstat(t, v.Path("link")); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(target)) {
			t.Fatalf("symlink: mode %o size %d, want a link of size %d", st.Mode, st.Size, len(target))
		}
	})
}

// TestOpsSetattr checks chmod, chown, utimens and truncate, by path and
// by descriptor.
func TestOpsSetattr(t *testing.T) {
	v := mntOps(t)
	t.Run("chmod", func(t *testing.T) {
		for _, c := range []struct {
			name string
			dir  bool
			mode uint32
		}{{"file", false, 0o600}, {"file", false, 0o4755}, {"file", false, 0o2711}, {"file", false, 0}, {"dir", true, 0o1777}, {"dir", true, 0o700}} {
			t.Run(fmt.Sprintf("%s,mode=%04o", c.name, c.mode), func(t *testing.T) {
				p := v.Path(fmt.Sprintf("chmod-%s-%o", c.name, c.mode))
				var err error
				if c.dir {
					err = os.Mkdir(p, 0o755)
				} else {
					err = os.WriteFile(p, []byte("x"), 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := unix.Chmod(p, c.mode); err != nil {
					t.Fatal(err)
				}
				if st := mntLstat(t, p); st.Mode&0o7777 != c.mode {
					t.Fatalf("mode %04o, want %04o", st.Mode&0o7777, c.mode)
				}
			})
		}
	})
	// chown and utimens by path: of a file closed in the daemon, of a file
	// some process holds open (the daemon then has a descriptor of it),
	// and of a directory.
	for _, kind := range []string{"file", "open-file", "dir"} {
		setup := func(t *testing.T, name string) string {
			p := v.Path(name)
			if kind == "dir" {
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
				return p
			}
			mntWriteFile(t, p, []byte("x"))
			if kind == "open-file" {
				mntOpen(t, p, os.O_RDONLY, 0)
			} else {
				v.WaitReleased(t, name)
			}
			return p
		}
		t.Run("chown,of="+kind, func(t *testing.T) {
			p := setup(t, "owned-"+kind)
			for _, c := range []struct{ uid, gid, wantUID, wantGID int }{
				{fusetest.Nobody, fusetest.Nobody, fusetest.Nobody, fusetest.Nobody}, {-1, 0, fusetest.Nobody, 0}, {0, -1, 0, 0}, {1234, 5678, 1234, 5678},
			} {
				if err := os.Lchown(p, c.uid, c.gid); err != nil {
					t.Fatalf("chown %d:%d: %v", c.uid, c.gid, err)
				}
				if st := mntLstat(t, p); int(st.Uid) != c.wantUID || int(st.Gid) != c.wantGID {
					t.Fatalf("chown %d:%d: owner %d:%d, want %d:%d", c.uid, c.gid, st.Uid, st.Gid, c.wantUID, c.wantGID)
				}
			}
		})
		t.Run("utimens,of="+kind, func(t *testing.T) {
			p := setup(t, "times-"+kind)
			at, mt := unix.Timespec{Sec: 1_000_000_000, Nsec: 123_456_789}, unix.Timespec{Sec: 2_000_000_000, Nsec: 987_654_321}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{at, mt}, 0); err != nil {
				t.Fatal(err)
			}
			if st := mntLstat(t, p); st.Atim != at || st.Mtim != mt {
				t.Fatalf("times %v %v, want %v %v", st.Atim, st.Mtim, at, mt)
			}
			// UTIME_OMIT keeps atime; a new mtime lands.
			mt2 := unix.Timespec{Sec: 1_500_000_000}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, mt2}, 0); err != nil {
				t.Fatal(err)
			}
			if st := mntLstat(t, p); st.Atim != at || st.Mtim != mt2 {
				t.Fatalf("after UTIME_OMIT: times %v %v, want %v %v", st.Atim, st.Mtim, at, mt2)
			}
			// UTIME_NOW sets both to now.
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}, 0); err != nil {
				t.Fatal(err)
			}
			if st := mntLstat(t, p); st.Atim.Sec < 1_700_000_000 || st.Mtim.Sec < 1_700_000_000 {
				t.Fatalf("after UTIME_NOW: times %v %v", st.Atim, st.Mtim)
			}
		})
	}
	t.Run("symlink-owner-and-times", func(t *testing.T) {
		// A symlink's own owner and times change, not its target's.
		p := v.Path("target")
		mntWriteFile(t, p, []byte("x"))
		v.WaitReleased(t, "target")
		l := v.Path("link")
		if err := os.Symlink("target", l); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(l, 42, 43); err != nil {
			t.Fatal(err)
		}
		mt := unix.Timespec{Sec: 2_000_000_000}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, l, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		if st := mntLstat(t, l); st.Uid != 42 || st.Gid != 43 || st.Mtim != mt {
			t.Fatalf("symlink: owner %d:%d mtime %v, want 42:43 and %v", st.Uid, st.Gid, st.Mtim, mt)
		}
		if st := mntLstat(t, p); st.Uid != 0 || st.Mtim == mt {
			t.Fatalf("lchown/lutimes of a symlink changed its target: owner %d mtime %v", st.Uid, st.Mtim)
		}
	})
	for _, via := range []string{"path", "fd"} {
		t.Run("truncate,via="+via, func(t *testing.T) {
			p := v.Path("trunc-" + via)
			model := mntRandom(7, 10000)
			mntWriteFile(t, p, model)
			var f *os.File
			if via == "fd" {
				f = mntOpen(t, p, os.O_RDWR, 0)
			}
			// Down across block boundaries and up again: what grows back
			// reads as zeros, never as the old bytes.
			for _, size := range []int{20000, 10000, 8193, 8192, 4097, 4096, 4095, 1, 9000, 0, 0, 5000, 3*4096 + 7} {
				var err error
				if f != nil {
					err = f.Truncate(int64(size))
				} else {
					err = os.Truncate(p, int64(size))
				}
				if err != nil {
					t.Fatalf("truncate to %d: %v", size, err)
				}
				if size <= len(model) {
					model = model[:size]
				} else {
					model = append(model, make([]byte, size-len(model))...)
				}
				if st := mntLstat(t, p); st.Size != int64(size) {
					t.Fatalf("truncate to %d: size %d", size, st.Size)
				}
				mntCheckFile(t, p, model)
			}
			if f != nil {
				f.Close()
			}
			v.Remount(t)
			mntCheckFile(t, p, model)
		})
	}
	t.Run("truncate-dir", func(t *testing.T) {
		if err := os.Mkdir(v.Path("trunc-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWantErrno(t, "truncate a directory", os.Truncate(v.Path("trunc-dir"), 0), syscall.EISDIR)
	})
	t.Run("unlinked-open", func(t *testing.T) {
		// A file removed while open keeps working through its descriptor:
		// ftruncate, fchmod, futimens, fstat, as on a local filesystem.
		p := v.Path("gone")
		mntWriteFile(t, p, mntRandom(3, 6000))
		f := mntOpen(t, p, os.O_RDWR, 0)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(100); err != nil {
			t.Fatalf("ftruncate: %v", err)
		}
		if err := f.Chmod(0o600); err != nil {
			t.Fatalf("fchmod: %v", err)
		}
		if err := f.Chown(fusetest.Nobody, fusetest.Nobody); err != nil {
			t.Fatalf("fchown: %v", err)
		}
		ts := unix.Timespec{Sec: 1_000_000_000}
		if err := unix.UtimesNanoAt(int(f.Fd()), "", []unix.Timespec{ts, ts}, unix.AT_EMPTY_PATH); err != nil {
			t.Fatalf("futimens: %v", err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != 100 || st.Nlink != 0 || st.Mode&0o7777 != 0o600 || st.Uid != fusetest.Nobody || st.Mtim != ts {
			t.Fatalf("fstat: size %d nlink %d mode %04o uid %d mtime %v, want 100, 0, 0600, %d, %v",
				st.Size, st.Nlink, st.Mode&0o7777, st.Uid, st.Mtim, fusetest.Nobody, ts)
		}
	})
}

// TestOpsStatfs checks that statfs reports the cipher dir's filesystem
// through the FUSE mount.
func TestOpsStatfs(t *testing.T) {
	v := mntOps(t)
	var mnt, back unix.Statfs_t
	if err := unix.Statfs(v.Mnt, &mnt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(v.Cipher, &back); err != nil {
		t.Fatal(err)
	}
	const fuseMagic = 0x65735546
	if mnt.Type != fuseMagic {
		t.Errorf("f_type %#x, want FUSE's %#x", mnt.Type, fuseMagic)
	}
	if mnt.Blocks*uint64(mnt.Bsize) != back.Blocks*uint64(back.Bsize) || mnt.Files != back.Files || mnt.Bsize == 0 {
		t.Errorf("statfs: %d blocks of %d, %d inodes; cipher dir: %d blocks of %d, %d inodes",
			mnt.Blocks, mnt.Bsize, mnt.Files, back.Blocks, back.Bsize, back.Files)
	}
	if mnt.Namelen != back.Namelen {
		t.Errorf("namelen %d, cipher dir's %d", mnt.Namelen, back.Namelen)
	}
	if mnt.Bavail == 0 || mnt.Bavail > mnt.Blocks {
		t.Errorf("bavail %d of %d blocks", mnt.Bavail, mnt.Blocks)
	}
}

// TestOpsXattr checks get/set/list/remove of extended attributes on files
// and dirs, their flags and sizes, and that they survive a remount, on a
// mount with --xattr; without it they fail with EOPNOTSUPP.
func TestOpsXattr(t *testing.T) {
	v := mntOps(t, "--xattr")
	mntWriteFile(t, v.Path("file"), []byte("x"))
	if err := os.Mkdir(v.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	large := bytes.Repeat([]byte("0123456789abcdef"), 200) // 3200 bytes
	for _, name := range []string{"file", "dir"} {
		t.Run("on="+name, func(t *testing.T) {
			p := v.Path(name)
			if err := unix.Setxattr(p, "user.kmsfs.a", []byte("alpha"), 0); err != nil {
				t.Fatal(err)
			}
			if err := unix.Setxattr(p, "user.kmsfs.large", large, unix.XATTR_CREATE); err != nil {
				t.Fatal(err)
			}
			if err := unix.Setxattr(p, "user.kmsfs.empty", nil, 0); err != nil {
				t.Fatal(err)
			}
			mntWantErrno(t, "XATTR_CREATE of an existing attribute", unix.Setxattr(p, "user.kmsfs.a", []byte("x"), unix.XATTR_CREATE), syscall.EEXIST)
			mntWantErrno(t, "XATTR_REPLACE of a missing attribute", unix.Setxattr(p, "user.kmsfs.none", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA)
			if err := unix.Setxattr(p, "user.kmsfs.a", []byte("beta"), unix.XATTR_REPLACE); err != nil {
				t.Fatal(err)
			}
			// A size query, then the value.
			if n, err := unix.Getxattr(p, "user.kmsfs.large", nil); err != nil || n != len(large) {
				t.Fatalf("size query: %d, %v, want %d", n, err, len(large))
			}
			mntCheckXattr(t, p, "user.kmsfs.large", large)
			mntCheckXattr(t, p, "user.kmsfs.a", []byte("beta"))
			mntCheckXattr(t, p, "user.kmsfs.empty", []byte{})
			buf := make([]byte, 3)
			if _, err := unix.Getxattr(p, "user.kmsfs.large", buf); mntErrno(err) != syscall.ERANGE {
				t.Fatalf("getxattr into a short buffer: %v, want ERANGE", err)
			}
			if names := mntListXattr(t, p); !slices.Equal(names, []string{"user.kmsfs.a", "user.kmsfs.empty", "user.kmsfs.large"}) {
				t.Fatalf("listxattr: %q", names)
			}
			if err := unix.Removexattr(p, "user.kmsfs.empty"); err != nil {
				t.Fatal(err)
			}
			mntWantErrno(t, "remove a missing attribute", unix.Removexattr(p, "user.kmsfs.empty"), syscall.ENODATA)
			_, err := unix.Getxattr(p, "user.kmsfs.empty", buf)
			mntWantErrno(t, "get a removed attribute", err, syscall.ENODATA)
		})
	}
	t.Run("after-remount", func(t *testing.T) {
		v.Remount(t)
		for _, name := range []string{"file", "dir"} {
			mntCheckXattr(t, v.Path(name), "user.kmsfs.large", large)
			if names := mntListXattr(t, v.Path(name)); !slices.Equal(names, []string{"user.kmsfs.a", "user.kmsfs.large"}) {
				t.Fatalf("%s: listxattr after remount: %q", name, names)
			}
		}
	})
	t.Run("root", func(t *testing.T) {
		if err := unix.Setxattr(v.Mnt, "user.kmsfs.root", []byte("r"), 0); err != nil {
			t.Fatal(err)
		}
		mntCheckXattr(t, v.Mnt, "user.kmsfs.root", []byte("r"))
	})
	t.Run("off", func(t *testing.T) {
		v.Remount(t, "--xattr=false")
		buf := make([]byte, 64<<10)
		_, err := unix.Getxattr(v.Path("file"), "user.kmsfs.a", buf)
		mntWantErrno(t, "getxattr without --xattr", err, syscall.EOPNOTSUPP)
		mntWantErrno(t, "setxattr without --xattr", unix.Setxattr(v.Path("file"), "user.kmsfs.b", []byte("b"), 0), syscall.EOPNOTSUPP)
		_, err = unix.Listxattr(v.Path("dir"), buf)
		mntWantErrno(t, "listxattr without --xattr", err, syscall.EOPNOTSUPP)
		v.Remount(t)
		if names := mntListXattr(t, v.Path("file")); !slices.Equal(names, []string{"user.kmsfs.a", "user.kmsfs.large"}) {
			t.Fatalf("listxattr after a mount without --xattr: %q", names)
		}
	})
}

func mntCheckXattr(t *testing.T, p, attr string, want []byte) {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(p, attr, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", filepath.Base(p), attr, err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("getxattr %s %s: %q, want %q", filepath.Base(p), attr, buf[:n], want)
	}
}

// mntListXattr returns the sorted user.* attribute names of p.
func mntListXattr(t *testing.T, p string) []string {
	t.Helper()
	n, err := unix.Listxattr(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	if n, err = unix.Listxattr(p, buf); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if strings.HasPrefix(s, "user.") {
			names = append(names, s)
		}
	}
	slices.Sort(names)
	return names
}

package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsMkdirRmdir checks mkdir (mode, link counts, errors) and rmdir
// (empty only, not files, gone from the cipher dir too).
func TestOpsMkdirRmdir(t *testing.T) {
	v := mntOps(t)
	mntUmask(t, 0o022)
	// Linux keeps the sticky bit of mkdir's mode, not set-group-ID.
	for _, c := range []struct{ mode, want uint32 }{{0o755, 0o755}, {0o777, 0o755}, {0o700, 0o700}, {0o2775, 0o755}, {0o1777, 0o1755}} {
		t.Run(fmt.Sprintf("mkdir,mode=%04o", c.mode), func(t *testing.T) {
			p := v.path(fmt.Sprintf("d%o", c.mode))
			if err := unix.Mkdir(p, c.mode); err != nil {
				t.Fatal(err)
			}
			if st := mntLstat(t, p); st.Mode != unix.S_IFDIR|c.want || st.Nlink != 2 {
				t.Fatalf("mode %o nlink %d, want %o and 2", st.Mode, st.Nlink, unix.S_IFDIR|c.want)
			}
		})
	}
	t.Run("setgid-parent", func(t *testing.T) {
		// A dir made in a set-group-ID dir inherits the bit and the group.
		// The parent is set up in the cipher dir, so that this checks
		// inheritance alone (TestOpsSetattr checks chown).
		if err := os.Mkdir(v.path("sgid"), 0o755); err != nil {
			t.Fatal(err)
		}
		back := filepath.Join(v.Cipher, "sgid")
		if err := os.Chown(back, 0, 100); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(back, 0o2775); err != nil { // os.Chmod takes os.ModeSetgid, not 02000
			t.Fatal(err)
		}
		v.remount(t)
		if err := os.Mkdir(v.path("sgid/child"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.path("sgid/file"), nil)
		if st := mntLstat(t, v.path("sgid/child")); st.Mode != unix.S_IFDIR|0o2755 || st.Gid != 100 {
			t.Fatalf("child dir: mode %o gid %d, want %o and 100", st.Mode, st.Gid, unix.S_IFDIR|0o2755)
		}
		if st := mntLstat(t, v.path("sgid/file")); st.Gid != 100 {
			t.Fatalf("file: gid %d, want 100", st.Gid)
		}
	})
	t.Run("nlink", func(t *testing.T) {
		before := mntLstat(t, v.Mnt).Nlink
		if err := os.Mkdir(v.path("sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if after := mntLstat(t, v.Mnt).Nlink; after != before+1 {
			t.Fatalf("parent nlink %d after mkdir, want %d", after, before+1)
		}
	})
	t.Run("errors", func(t *testing.T) {
		mntWantErrno(t, "mkdir over a dir", os.Mkdir(v.path("sub"), 0o755), syscall.EEXIST)
		mntWantErrno(t, "mkdir in a missing dir", os.Mkdir(v.path("none/sub"), 0o755), syscall.ENOENT)
		mntWriteFile(t, v.path("sub/file"), []byte("x"))
		mntWantErrno(t, "rmdir of a non-empty dir", unix.Rmdir(v.path("sub")), syscall.ENOTEMPTY)
		mntWantErrno(t, "rmdir of a file", unix.Rmdir(v.path("sub/file")), syscall.ENOTDIR)
		mntWantErrno(t, "rmdir of a missing dir", unix.Rmdir(v.path("none")), syscall.ENOENT)
	})
	t.Run("rmdir", func(t *testing.T) {
		if err := os.MkdirAll(v.path("gone/inner"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"gone/inner", "gone"} {
			if err := unix.Rmdir(v.path(d)); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(v.Cipher, d)); !os.IsNotExist(err) {
				t.Fatalf("%s still in the cipher dir: %v", d, err)
			}
		}
		// The name is free again.
		if err := os.Mkdir(v.path("gone"), 0o700); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpsUnlink checks unlink of files, links and special files, and that
// kmsfs.conf can be neither seen, removed nor replaced through the mount.
func TestOpsUnlink(t *testing.T) {
	v := mntOps(t)
	mntWriteFile(t, v.path("f"), []byte("x"))
	if err := os.Symlink("f", v.path("l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(v.path("p"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"l", "f", "p"} {
		if err := unix.Unlink(v.path(name)); err != nil {
			t.Fatalf("unlink %s: %v", name, err)
		}
		if _, err := os.Lstat(v.path(name)); !os.IsNotExist(err) {
			t.Fatalf("%s after unlink: %v", name, err)
		}
		if _, err := os.Lstat(filepath.Join(v.Cipher, name)); !os.IsNotExist(err) {
			t.Fatalf("%s still in the cipher dir: %v", name, err)
		}
	}
	mntWantErrno(t, "unlink a missing file", unix.Unlink(v.path("f")), syscall.ENOENT)
	if err := os.Mkdir(v.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mntWantErrno(t, "unlink a dir", unix.Unlink(v.path("d")), syscall.EISDIR)

	conf := filepath.Join(v.Cipher, "kmsfs.conf")
	raw, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	mntWantErrno(t, "unlink kmsfs.conf", unix.Unlink(v.path("kmsfs.conf")), syscall.ENOENT)
	mntWantErrno(t, "create kmsfs.conf", os.WriteFile(v.path("kmsfs.conf"), []byte("{}"), 0o644), syscall.EPERM)
	mntWantErrno(t, "rename onto kmsfs.conf", os.Rename(v.path("d"), v.path("kmsfs.conf")), syscall.EPERM)
	mntWantErrno(t, "mkdir kmsfs.conf", os.Mkdir(v.path("kmsfs.conf"), 0o755), syscall.EPERM)
	if after, err := os.ReadFile(conf); err != nil || string(after) != string(raw) {
		t.Fatalf("kmsfs.conf changed through the mount: %v", err)
	}
	// Below the root the name is an ordinary one.
	mntWriteFile(t, v.path("d/kmsfs.conf"), []byte("mine"))
	mntCheckFile(t, v.path("d/kmsfs.conf"), []byte("mine"))
}

// TestOpsRename checks rename: to a free name, across dirs, replacing a
// file, replacing an empty dir, refusing a non-empty one,
// RENAME_NOREPLACE, RENAME_EXCHANGE, and an open file keeps working
// under its new name.
func TestOpsRename(t *testing.T) {
	v := mntOps(t)
	for _, d := range []string{"a", "b", "full", "empty"} {
		if err := os.Mkdir(v.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mntWriteFile(t, v.path("full/x"), []byte("x"))
	t.Run("across-dirs", func(t *testing.T) {
		data := mntRandom(20, 9000)
		mntWriteFile(t, v.path("a/moved"), data)
		if err := os.Rename(v.path("a/moved"), v.path("b/moved")); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.path("b/moved"), data)
		if _, err := os.Lstat(v.path("a/moved")); !os.IsNotExist(err) {
			t.Fatalf("old name: %v", err)
		}
	})
	t.Run("replace-file", func(t *testing.T) {
		src, dst := mntRandom(21, 5000), mntRandom(22, 7000)
		mntWriteFile(t, v.path("a/src"), src)
		mntWriteFile(t, v.path("b/dst"), dst)
		old := mntOpen(t, v.path("b/dst"), os.O_RDONLY, 0) // the replaced file stays readable
		if err := os.Rename(v.path("a/src"), v.path("b/dst")); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.path("b/dst"), src)
		buf := make([]byte, len(dst))
		if _, err := old.ReadAt(buf, 0); err != nil || string(buf) != string(dst) {
			t.Fatalf("replaced file through an open handle: %v", err)
		}
	})
	t.Run("replace-dir", func(t *testing.T) {
		if err := os.Mkdir(v.path("a/dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.path("a/dir/inside"), []byte("in"))
		// os.Rename refuses existing dirs itself: call rename(2).
		if err := unix.Rename(v.path("a/dir"), v.path("empty")); err != nil {
			t.Fatalf("rename over an empty dir: %v", err)
		}
		mntCheckFile(t, v.path("empty/inside"), []byte("in"))
		mntWantErrno(t, "rename over a non-empty dir", unix.Rename(v.path("empty"), v.path("full")), syscall.ENOTEMPTY)
		mntWantErrno(t, "rename a dir over a file", unix.Rename(v.path("empty"), v.path("b/dst")), syscall.ENOTDIR)
		mntWantErrno(t, "rename a file over a dir", unix.Rename(v.path("b/dst"), v.path("full")), syscall.EISDIR)
	})
	t.Run("noreplace", func(t *testing.T) {
		mntWriteFile(t, v.path("a/n1"), []byte("one"))
		mntWriteFile(t, v.path("a/n2"), []byte("two"))
		err := unix.Renameat2(unix.AT_FDCWD, v.path("a/n1"), unix.AT_FDCWD, v.path("a/n2"), unix.RENAME_NOREPLACE)
		mntWantErrno(t, "RENAME_NOREPLACE onto an existing name", err, syscall.EEXIST)
		mntCheckFile(t, v.path("a/n1"), []byte("one"))
		mntCheckFile(t, v.path("a/n2"), []byte("two"))
		if err := unix.Renameat2(unix.AT_FDCWD, v.path("a/n1"), unix.AT_FDCWD, v.path("b/n3"), unix.RENAME_NOREPLACE); err != nil {
			t.Fatalf("RENAME_NOREPLACE to a free name: %v", err)
		}
		mntCheckFile(t, v.path("b/n3"), []byte("one"))
	})
	t.Run("exchange", func(t *testing.T) {
		x, y := mntRandom(23, 4097), mntRandom(24, 100)
		mntWriteFile(t, v.path("a/x"), x)
		mntWriteFile(t, v.path("b/y"), y)
		if err := unix.Renameat2(unix.AT_FDCWD, v.path("a/x"), unix.AT_FDCWD, v.path("b/y"), unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.path("a/x"), y)
		mntCheckFile(t, v.path("b/y"), x)
		// A file and a dir.
		if err := unix.Renameat2(unix.AT_FDCWD, v.path("a/x"), unix.AT_FDCWD, v.path("full"), unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.path("full"), y)
		mntCheckFile(t, v.path("a/x/x"), []byte("x"))
		err := unix.Renameat2(unix.AT_FDCWD, v.path("a/none"), unix.AT_FDCWD, v.path("b/y"), unix.RENAME_EXCHANGE)
		mntWantErrno(t, "RENAME_EXCHANGE with a missing name", err, syscall.ENOENT)
		v.remount(t)
		mntCheckFile(t, v.path("b/y"), x)
		mntCheckFile(t, v.path("a/x/x"), []byte("x"))
	})
	t.Run("open-dir-replaced", func(t *testing.T) {
		// A dir replaced by rename stays usable through an open
		// descriptor, as on a local filesystem.
		if err := os.Mkdir(v.path("a/src-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(v.path("a/victim"), 0o700); err != nil {
			t.Fatal(err)
		}
		before := mntLstat(t, v.path("a/victim"))
		fd, err := unix.Open(v.path("a/victim"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Rename(v.path("a/src-dir"), v.path("a/victim")); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatalf("fstat of the replaced dir: %v", err)
		}
		if st.Ino != before.Ino || st.Mode != before.Mode {
			t.Fatalf("fstat of the replaced dir: ino %d mode %o, want %d %o", st.Ino, st.Mode, before.Ino, before.Mode)
		}
	})
	t.Run("open-file", func(t *testing.T) {
		f := mntOpen(t, v.path("a/open"), os.O_CREATE|os.O_RDWR, 0o644)
		if _, err := f.Write([]byte("before ")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(v.path("a/open"), v.path("b/renamed")); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte("after")); err != nil {
			t.Fatalf("write after rename: %v", err)
		}
		f.Close()
		mntCheckFile(t, v.path("b/renamed"), []byte("before after"))
	})
	t.Run("dir-with-open-child", func(t *testing.T) {
		// Nodes below a renamed dir find their backing files by the new path.
		if err := os.MkdirAll(v.path("a/tree/sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.path("a/tree/sub/leaf"), []byte("leaf"))
		f := mntOpen(t, v.path("a/tree/sub/leaf"), os.O_RDWR, 0)
		if err := os.Rename(v.path("a/tree"), v.path("b/tree2")); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("LEAF"), 0); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.path("b/tree2/sub/new"), []byte("new"))
		if err := os.Chmod(v.path("b/tree2/sub/leaf"), 0o600); err != nil {
			t.Fatal(err)
		}
		f.Close()
		mntCheckFile(t, v.path("b/tree2/sub/leaf"), []byte("LEAF"))
		mntCheckFile(t, filepath.Join(v.Mnt, "b/tree2/sub/new"), []byte("new"))
	})
}

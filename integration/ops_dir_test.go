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
			p := v.Path(fmt.Sprintf("d%o", c.mode))
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
		if err := os.Mkdir(v.Path("sgid"), 0o755); err != nil {
			t.Fatal(err)
		}
		back := filepath.Join(v.Cipher, "sgid")
		if err := os.Chown(back, 0, 100); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(back, 0o2775); err != nil { // os.Chmod takes os.ModeSetgid, not 02000
			t.Fatal(err)
		}
		v.Remount(t)
		if err := os.Mkdir(v.Path("sgid/child"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.Path("sgid/file"), nil)
		if st := mntLstat(t, v.Path("sgid/child")); st.Mode != unix.S_IFDIR|0o2755 || st.Gid != 100 {
			t.Fatalf("child dir: mode %o gid %d, want %o and 100", st.Mode, st.Gid, unix.S_IFDIR|0o2755)
		}
		if st := mntLstat(t, v.Path("sgid/file")); st.Gid != 100 {
			t.Fatalf("file: gid %d, want 100", st.Gid)
		}
	})
	t.Run("nlink", func(t *testing.T) {
		before := mntLstat(t, v.Mnt).Nlink
		if err := os.Mkdir(v.Path("sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if after := mntLstat(t, v.Mnt).Nlink; after != before+1 {
			t.Fatalf("parent nlink %d after mkdir, want %d", after, before+1)
		}
	})
	t.Run("errors", func(t *testing.T) {
		mntWantErrno(t, "mkdir over a dir", os.Mkdir(v.Path("sub"), 0o755), syscall.EEXIST)
		mntWantErrno(t, "mkdir in a missing dir", os.Mkdir(v.Path("none/sub"), 0o755), syscall.ENOENT)
		mntWriteFile(t, v.Path("sub/file"), []byte("x"))
		mntWantErrno(t, "rmdir of a non-empty dir", unix.Rmdir(v.Path("sub")), syscall.ENOTEMPTY)
		mntWantErrno(t, "rmdir of a file", unix.Rmdir(v.Path("sub/file")), syscall.ENOTDIR)
		mntWantErrno(t, "rmdir of a missing dir", unix.Rmdir(v.Path("none")), syscall.ENOENT)
	})
	t.Run("rmdir", func(t *testing.T) {
		if err := os.MkdirAll(v.Path("gone/inner"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"gone/inner", "gone"} {
			if err := unix.Rmdir(v.Path(d)); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(v.Cipher, d)); !os.IsNotExist(err) {
				t.Fatalf("%s still in the cipher dir: %v", d, err)
			}
		}
		// The name is free again.
		if err := os.Mkdir(v.Path("gone"), 0o700); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpsUnlink checks unlink of files, links and special files, and that
// kmsfs.conf can be neither seen, removed nor replaced through the mount.
func TestOpsUnlink(t *testing.T) {
	v := mntOps(t)
	mntWriteFile(t, v.Path("f"), []byte("x"))
	if err := os.Symlink("f", v.Path("l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(v.Path("p"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"l", "f", "p"} {
		if err := unix.Unlink(v.Path(name)); err != nil {
			t.Fatalf("unlink %s: %v", name, err)
		}
		if _, err := os.Lstat(v.Path(name)); !os.IsNotExist(err) {
			t.Fatalf("%s after unlink: %v", name, err)
		}
		if _, err := os.Lstat(filepath.Join(v.Cipher, name)); !os.IsNotExist(err) {
			t.Fatalf("%s still in the cipher dir: %v", name, err)
		}
	}
	mntWantErrno(t, "unlink a missing file", unix.Unlink(v.Path("f")), syscall.ENOENT)
	if err := os.Mkdir(v.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mntWantErrno(t, "unlink a dir", unix.Unlink(v.Path("d")), syscall.EISDIR)

	conf := filepath.Join(v.Cipher, "kmsfs.conf")
	raw, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	mntWantErrno(t, "unlink kmsfs.conf", unix.Unlink(v.Path("kmsfs.conf")), syscall.ENOENT)
	mntWantErrno(t, "create kmsfs.conf", os.WriteFile(v.Path("kmsfs.conf"), []byte("{}"), 0o644), syscall.EPERM)
	mntWantErrno(t, "rename onto kmsfs.conf", os.Rename(v.Path("d"), v.Path("kmsfs.conf")), syscall.EPERM)
	mntWantErrno(t, "mkdir kmsfs.conf", os.Mkdir(v.Path("kmsfs.conf"), 0o755), syscall.EPERM)
	if after, err := os.ReadFile(conf); err != nil || string(after) != string(raw) {
		t.Fatalf("kmsfs.conf changed through the mount: %v", err)
	}
	// Below the root the name is an ordinary one.
	mntWriteFile(t, v.Path("d/kmsfs.conf"), []byte("mine"))
	mntCheckFile(t, v.Path("d/kmsfs.conf"), []byte("mine"))
}

// TestOpsRename checks rename: to a free name, across dirs, replacing a
// file, replacing an empty dir, refusing a non-empty one,
// RENAME_NOREPLACE, RENAME_EXCHANGE, and an open file keeps working
// under its new name.
func TestOpsRename(t *testing.T) {
	v := mntOps(t)
	for _, d := range []string{"a", "b", "full", "empty"} {
		if err := os.Mkdir(v.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mntWriteFile(t, v.Path("full/x"), []byte("x"))
	t.Run("across-dirs", func(t *testing.T) {
		data := mntRandom(20, 9000)
		mntWriteFile(t, v.Path("a/moved"), data)
		if err := os.Rename(v.Path("a/moved"), v.Path("b/moved")); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.Path("b/moved"), data)
		if _, err := os.Lstat(v.Path("a/moved")); !os.IsNotExist(err) {
			t.Fatalf("old name: %v", err)
		}
	})
	t.Run("replace-file", func(t *testing.T) {
		src, dst := mntRandom(21, 5000), mntRandom(22, 7000)
		mntWriteFile(t, v.Path("a/src"), src)
		mntWriteFile(t, v.Path("b/dst"), dst)
		old := mntOpen(t, v.Path("b/dst"), os.O_RDONLY, 0) // the replaced file stays readable
		if err := os.Rename(v.Path("a/src"), v.Path("b/dst")); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.Path("b/dst"), src)
		buf := make([]byte, len(dst))
		if _, err := old.ReadAt(buf, 0); err != nil || string(buf) != string(dst) {
			t.Fatalf("replaced file through an open handle: %v", err)
		}
	})
	t.Run("replace-dir", func(t *testing.T) {
		if err := os.Mkdir(v.Path("a/dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.Path("a/dir/inside"), []byte("in"))
		// os.Rename refuses existing dirs itself: call rename(2).
		if err := unix.Rename(v.Path("a/dir"), v.Path("empty")); err != nil {
			t.Fatalf("rename over an empty dir: %v", err)
		}
		mntCheckFile(t, v.Path("empty/inside"), []byte("in"))
		mntWantErrno(t, "rename over a non-empty dir", unix.Rename(v.Path("empty"), v.Path("full")), syscall.ENOTEMPTY)
		mntWantErrno(t, "rename a dir over a file", unix.Rename(v.Path("empty"), v.Path("b/dst")), syscall.ENOTDIR)
		mntWantErrno(t, "rename a file over a dir", unix.Rename(v.Path("b/dst"), v.Path("full")), syscall.EISDIR)
	})
	t.Run("noreplace", func(t *testing.T) {
		mntWriteFile(t, v.Path("a/n1"), []byte("one"))
		mntWriteFile(t, v.Path("a/n2"), []byte("two"))
		err := unix.Renameat2(unix.AT_FDCWD, v.Path("a/n1"), unix.AT_FDCWD, v.Path("a/n2"), unix.RENAME_NOREPLACE)
		mntWantErrno(t, "RENAME_NOREPLACE onto an existing name", err, syscall.EEXIST)
		mntCheckFile(t, v.Path("a/n1"), []byte("one"))
		mntCheckFile(t, v.Path("a/n2"), []byte("two"))
		if err := unix.Renameat2(unix.AT_FDCWD, v.Path("a/n1"), unix.AT_FDCWD, v.Path("b/n3"), unix.RENAME_NOREPLACE); err != nil {
			t.Fatalf("RENAME_NOREPLACE to a free name: %v", err)
		}
		mntCheckFile(t, v.Path("b/n3"), []byte("one"))
	})
	t.Run("exchange", func(t *testing.T) {
		x, y := mntRandom(23, 4097), mntRandom(24, 100)
		mntWriteFile(t, v.Path("a/x"), x)
		mntWriteFile(t, v.Path("b/y"), y)
		if err := unix.Renameat2(unix.AT_FDCWD, v.Path("a/x"), unix.AT_FDCWD, v.Path("b/y"), unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.Path("a/x"), y)
		mntCheckFile(t, v.Path("b/y"), x)
		// A file and a dir.
		if err := unix.Renameat2(unix.AT_FDCWD, v.Path("a/x"), unix.AT_FDCWD, v.Path("full"), unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
		mntCheckFile(t, v.Path("full"), y)
		mntCheckFile(t, v.Path("a/x/x"), []byte("x"))
		err := unix.Renameat2(unix.AT_FDCWD, v.Path("a/none"), unix.AT_FDCWD, v.Path("b/y"), unix.RENAME_EXCHANGE)
		mntWantErrno(t, "RENAME_EXCHANGE with a missing name", err, syscall.ENOENT)
		v.Remount(t)
		mntCheckFile(t, v.Path("b/y"), x)
		mntCheckFile(t, v.Path("a/x/x"), []byte("x"))
	})
	t.Run("open-dir-replaced", func(t *testing.T) {
		// A dir replaced by rename stays usable through an open
		// descriptor, as on a local filesystem.
		if err := os.Mkdir(v.Path("a/src-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(v.Path("a/victim"), 0o700); err != nil {
			t.Fatal(err)
		}
		before := mntLstat(t, v.Path("a/victim"))
		fd, err := unix.Open(v.Path("a/victim"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Rename(v.Path("a/src-dir"), v.Path("a/victim")); err != nil {
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
		f := mntOpen(t, v.Path("a/open"), os.O_CREATE|os.O_RDWR, 0o644)
		if _, err := f.Write([]byte("before ")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(v.Path("a/open"), v.Path("b/renamed")); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte("after")); err != nil {
			t.Fatalf("write after rename: %v", err)
		}
		f.Close()
		mntCheckFile(t, v.Path("b/renamed"), []byte("before after"))
	})
	t.Run("dir-with-open-child", func(t *testing.T) {
		// Nodes below a renamed dir find their backing files by the new path.
		if err := os.MkdirAll(v.Path("a/tree/sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.Path("a/tree/sub/leaf"), []byte("leaf"))
		f := mntOpen(t, v.Path("a/tree/sub/leaf"), os.O_RDWR, 0)
		if err := os.Rename(v.Path("a/tree"), v.Path("b/tree2")); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("LEAF"), 0); err != nil {
			t.Fatal(err)
		}
		mntWriteFile(t, v.Path("b/tree2/sub/new"), []byte("new"))
		if err := os.Chmod(v.Path("b/tree2/sub/leaf"), 0o600); err != nil {
			t.Fatal(err)
		}
		f.Close()
		mntCheckFile(t, v.Path("b/tree2/sub/leaf"), []byte("LEAF"))
		mntCheckFile(t, filepath.Join(v.Mnt, "b/tree2/sub/new"), []byte("new"))
	})
}

package integration_test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
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
		back := v.BackingPath(t, "sgid")
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
			back := v.BackingPath(t, d)
			if err := unix.Rmdir(v.Path(d)); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(back); !os.IsNotExist(err) {
				t.Fatalf("%s still in the cipher dir: %v", d, err)
			}
		}
		// The name is free again.
		if err := os.Mkdir(v.Path("gone"), 0o700); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpsUnlink checks unlink of files, links and special files (gone from
// the cipher dir too), and kmsfs's own files at the cipher dir's root
// (kmsfs.conf, kmsfs.journal, kmsfs.names), which a user of the mount must
// not reach: with names in clear those names can be neither seen, removed
// nor replaced through the mount; with encrypted names they are ordinary
// names, stored encrypted, and kmsfs's files stay as they were.
func TestOpsUnlink(t *testing.T) {
	for _, m := range sxNameModes {
		t.Run("names="+m.name, func(t *testing.T) {
			v := suite.StartVolume(t, fusetest.CLIOptions{InitArgs: ftNamesInit(m.encrypted)})
			mntUnlink(t, v)
			own := mntOwnFiles(t, v.Cipher)
			for _, name := range mntOwnNames {
				t.Run("own="+name, func(t *testing.T) {
					// Not seen through the mount before it is made.
					if _, err := os.Lstat(v.Path(name)); !os.IsNotExist(err) {
						t.Errorf("lstat %s through the mount: %v, want ENOENT", name, err)
					}
					mntWantErrno(t, "unlink "+name, unix.Unlink(v.Path(name)), syscall.ENOENT)
					if m.encrypted {
						mntOwnNameOrdinary(t, v, name)
					} else {
						mntOwnNameRefused(t, v, name)
					}
				})
			}
			if after := mntOwnFiles(t, v.Cipher); !maps.Equal(after, own) {
				t.Fatalf("kmsfs's own files changed through the mount: %v, were %v", slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(own)))
			}
			// Below the root the names are ordinary ones in both modes.
			mntWriteFile(t, v.Path("d/kmsfs.conf"), []byte("mine"))
			mntCheckFile(t, v.Path("d/kmsfs.conf"), []byte("mine"))
			v.Remount(t)
			mntCheckFile(t, v.Path("d/kmsfs.conf"), []byte("mine"))
		})
	}
}

// mntUnlink unlinks a file, a symlink and a FIFO, checks that their
// backing entries are gone, and leaves an empty dir "d".
func mntUnlink(t *testing.T, v *fusetest.CLIVolume) {
	t.Helper()
	mntWriteFile(t, v.Path("f"), []byte("x"))
	if err := os.Symlink("f", v.Path("l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(v.Path("p"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"l", "f", "p"} {
		back := v.BackingPath(t, name)
		if err := unix.Unlink(v.Path(name)); err != nil {
			t.Fatalf("unlink %s: %v", name, err)
		}
		if _, err := os.Lstat(v.Path(name)); !os.IsNotExist(err) {
			t.Fatalf("%s after unlink: %v", name, err)
		}
		if _, err := os.Lstat(back); !os.IsNotExist(err) {
			t.Fatalf("%s still in the cipher dir as %s: %v", name, back, err)
		}
	}
	mntWantErrno(t, "unlink a missing file", unix.Unlink(v.Path("f")), syscall.ENOENT)
	if err := os.Mkdir(v.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mntWantErrno(t, "unlink a dir", unix.Unlink(v.Path("d")), syscall.EISDIR)
}

// mntOwnNames are kmsfs's own entries at the root of a cipher dir.
var mntOwnNames = []string{"kmsfs.conf", "kmsfs.journal", "kmsfs.names"}

// mntOwnFiles returns what the cipher dir's root holds under kmsfs's own
// names: each file's bytes, or the type of another entry.
func mntOwnFiles(t *testing.T, cipher string) map[string]string {
	t.Helper()
	own := map[string]string{}
	for _, name := range mntOwnNames {
		p := filepath.Join(cipher, name)
		fi, err := os.Lstat(p)
		switch {
		case os.IsNotExist(err):
			continue
		case err != nil:
			t.Fatal(err)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			own[name] = string(b)
		default:
			own[name] = fi.Mode().Type().String()
		}
	}
	return own
}

// mntOwnNameRefused checks that with names in clear kmsfs's own name at
// the mount's root cannot be made.
func mntOwnNameRefused(t *testing.T, v *fusetest.CLIVolume, name string) {
	t.Helper()
	mntWantErrno(t, "create "+name, os.WriteFile(v.Path(name), []byte("{}"), 0o644), syscall.EPERM)
	mntWantErrno(t, "rename onto "+name, os.Rename(v.Path("d"), v.Path(name)), syscall.EPERM)
	mntWantErrno(t, "mkdir "+name, os.Mkdir(v.Path(name), 0o755), syscall.EPERM)
}

// mntOwnNameOrdinary checks that with encrypted names kmsfs's own name at
// the mount's root is an ordinary one: created, renamed onto and removed
// like any other, and stored under an encrypted backing name.
func mntOwnNameOrdinary(t *testing.T, v *fusetest.CLIVolume, name string) {
	t.Helper()
	data := []byte("user data named " + name)
	mntWriteFile(t, v.Path(name), data)
	mntCheckFile(t, v.Path(name), data)
	if back := v.BackingPath(t, name); filepath.Base(back) == name {
		t.Errorf("%s is stored under its plaintext name %s", name, back)
	}
	mntWriteFile(t, v.Path("src"), []byte("renamed"))
	if err := os.Rename(v.Path("src"), v.Path(name)); err != nil {
		t.Fatalf("rename onto %s: %v", name, err)
	}
	mntCheckFile(t, v.Path(name), []byte("renamed"))
	if err := unix.Unlink(v.Path(name)); err != nil {
		t.Fatalf("unlink %s: %v", name, err)
	}
	if err := os.Mkdir(v.Path(name), 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", name, err)
	}
	if err := unix.Rmdir(v.Path(name)); err != nil {
		t.Fatalf("rmdir %s: %v", name, err)
	}
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

package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsAllowOther mounts as root with --allow-other -o
// default_permissions and acts as nobody: what nobody creates belongs to
// nobody:nogroup (also in the cipher dir), and the kernel's permission
// checks apply to nobody as on a local filesystem.
func TestOpsAllowOther(t *testing.T) {
	dir := mntSharedDir(t)
	v := mntStart(t, mntOptions{Dir: dir, MountArgs: []string{"--allow-other", "-o", "default_permissions"}})
	nobody := &mntHelper{bin: mntBuildHelper(t, dir), cred: mntNobodyCred()}
	other := &mntHelper{bin: nobody.bin, cred: &syscall.Credential{Uid: 65533, Gid: 65533, Groups: []uint32{}}}
	mntUmask(t, 0o022)

	// The mount's root is the cipher dir's (made 0700): open it up.
	if err := unix.Chmod(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Made by root: a world-writable sticky dir, a private file, a dir
	// only root may write, a file in the sticky dir.
	if err := os.Mkdir(v.path("pub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(v.path("pub"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(v.path("rootdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.path("private"), []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	mntWriteFile(t, v.path("pub/rootfile"), []byte("root's"))
	mntWriteFile(t, v.path("rootdir/readable"), []byte("for all"))

	t.Run("created-by-nobody", func(t *testing.T) {
		nobody.must(t, "create", v.path("pub/file"), "644", "nobody's data")
		nobody.must(t, "mkdir", v.path("pub/dir"), "755")
		nobody.must(t, "create", v.path("pub/dir/nested"), "600", "nested")
		nobody.must(t, "symlink", "file", v.path("pub/link"))
		nobody.must(t, "mkfifo", v.path("pub/fifo"), "644")
		for _, name := range []string{"pub/file", "pub/dir", "pub/dir/nested", "pub/link", "pub/fifo"} {
			for _, p := range []string{v.path(name), filepath.Join(v.Cipher, name)} {
				if st := mntLstat(t, p); st.Uid != mntNobody || st.Gid != mntNobody {
					t.Errorf("%s: owner %d:%d, want nobody %d:%d", p, st.Uid, st.Gid, mntNobody, mntNobody)
				}
			}
		}
		if got := nobody.must(t, "read", v.path("pub/file")); got != "nobody's data" {
			t.Fatalf("nobody reads %q back", got)
		}
		nobody.must(t, "append", v.path("pub/file"), " and more")
		mntCheckFile(t, v.path("pub/file"), []byte("nobody's data and more"))
		// nobody sees its own attributes.
		if got := nobody.must(t, "stat", v.path("pub/dir/nested")); got != fmt.Sprintf("%d %d 100600 6", mntNobody, mntNobody) {
			t.Fatalf("nobody stats its file: %q", got)
		}
	})
	t.Run("setgid-dir", func(t *testing.T) {
		// In a set-group-ID dir new entries take the dir's group.
		if err := os.Mkdir(v.path("pub/grp"), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(v.path("pub/grp"), 0, 100); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(v.path("pub/grp"), 0o2777); err != nil {
			t.Fatal(err)
		}
		nobody.must(t, "create", v.path("pub/grp/f"), "644", "g")
		nobody.must(t, "mkdir", v.path("pub/grp/d"), "755")
		for _, name := range []string{"pub/grp/f", "pub/grp/d"} {
			if st := mntLstat(t, v.path(name)); st.Uid != mntNobody || st.Gid != 100 {
				t.Errorf("%s: owner %d:%d, want %d:100", name, st.Uid, st.Gid, mntNobody)
			}
		}
		if st := mntLstat(t, v.path("pub/grp/d")); st.Mode&unix.S_ISGID == 0 {
			t.Errorf("pub/grp/d: mode %o, want set-group-ID inherited", st.Mode)
		}
	})
	t.Run("denied", func(t *testing.T) {
		for _, c := range []struct {
			name string
			h    *mntHelper
			args []string
			want syscall.Errno
		}{
			{"read-private", nobody, []string{"read", v.path("private")}, syscall.EACCES},
			{"write-private", nobody, []string{"write", v.path("private"), "x"}, syscall.EACCES},
			{"create-in-rootdir", nobody, []string{"create", v.path("rootdir/x"), "644", "x"}, syscall.EACCES},
			{"mkdir-in-rootdir", nobody, []string{"mkdir", v.path("rootdir/x"), "755"}, syscall.EACCES},
			{"unlink-in-rootdir", nobody, []string{"unlink", v.path("rootdir/readable")}, syscall.EACCES},
			{"write-readonly-file", nobody, []string{"write", v.path("rootdir/readable"), "x"}, syscall.EACCES},
			{"chmod-roots-file", nobody, []string{"chmod", v.path("pub/rootfile"), "666"}, syscall.EPERM},
			{"chown-own-file-to-root", nobody, []string{"chown", v.path("pub/file"), "0", "0"}, syscall.EPERM},
			{"utimes-roots-file", nobody, []string{"utimes", v.path("pub/rootfile"), "1000000000"}, syscall.EPERM},
			{"unlink-sticky", nobody, []string{"unlink", v.path("pub/rootfile")}, syscall.EPERM},
			{"rename-sticky", nobody, []string{"rename", v.path("pub/rootfile"), v.path("pub/stolen")}, syscall.EPERM},
			{"other-reads-nobodys-0600", other, []string{"read", v.path("pub/dir/nested")}, syscall.EACCES},
			{"other-unlinks-nobodys-file", other, []string{"unlink", v.path("pub/file")}, syscall.EPERM},
		} {
			t.Run(c.name, func(t *testing.T) {
				if _, errno := c.h.do(t, c.args...); errno != c.want {
					t.Fatalf("%v: errno %v (%d), want %v", c.args, errno, errno, c.want)
				}
			})
		}
		mntCheckFile(t, v.path("private"), []byte("root's secret"))
		mntCheckFile(t, v.path("pub/rootfile"), []byte("root's"))
	})
	t.Run("allowed", func(t *testing.T) {
		if got := nobody.must(t, "read", v.path("rootdir/readable")); got != "for all" {
			t.Fatalf("nobody reads %q", got)
		}
		nobody.must(t, "chmod", v.path("pub/file"), "600")
		nobody.must(t, "rename", v.path("pub/file"), v.path("pub/file2"))
		// Root reads a file private to nobody.
		mntCheckFile(t, v.path("pub/file2"), []byte("nobody's data and more"))
		nobody.must(t, "unlink", v.path("pub/file2"))
		nobody.must(t, "unlink", v.path("pub/dir/nested"))
		nobody.must(t, "rmdir", v.path("pub/dir"))
	})
}

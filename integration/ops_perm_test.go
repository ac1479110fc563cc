package integration_test

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestOpsAllowOther mounts as root with --allow-other -o
// default_permissions and acts as nobody: what nobody creates belongs to
// nobody:nogroup (also in the cipher dir), and the kernel's permission
// checks apply to nobody as on a local filesystem.
func TestOpsAllowOther(t *testing.T) {
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, MountArgs: []string{"--allow-other", "-o", "default_permissions"}})
	nobody := suite.User(t, fusetest.NobodyCred())
	other := suite.User(t, &syscall.Credential{Uid: 65533, Gid: 65533, Groups: []uint32{}})
	mntUmask(t, 0o022)

	// The mount's root is the cipher dir's (made 0700): open it up.
	if err := unix.Chmod(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Made by root: a world-writable sticky dir, a private file, a dir
	// only root may write, a file in the sticky dir.
	if err := os.Mkdir(v.Path("pub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(v.Path("pub"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(v.Path("rootdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Path("private"), []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	mntWriteFile(t, v.Path("pub/rootfile"), []byte("root's"))
	mntWriteFile(t, v.Path("rootdir/readable"), []byte("for all"))

	t.Run("created-by-nobody", func(t *testing.T) {
		nobody.Must(t, "create", v.Path("pub/file"), "644", "nobody's data")
		nobody.Must(t, "mkdir", v.Path("pub/dir"), "755")
		nobody.Must(t, "create", v.Path("pub/dir/nested"), "600", "nested")
		nobody.Must(t, "symlink", "file", v.Path("pub/link"))
		nobody.Must(t, "mkfifo", v.Path("pub/fifo"), "644")
		for _, name := range []string{"pub/file", "pub/dir", "pub/dir/nested", "pub/link", "pub/fifo"} {
			for _, p := range []string{v.Path(name), v.BackingPath(t, name)} {
				if st := mntLstat(t, p); st.Uid != fusetest.Nobody || st.Gid != fusetest.Nobody {
					t.Errorf("%s: owner %d:%d, want nobody %d:%d", p, st.Uid, st.Gid, fusetest.Nobody, fusetest.Nobody)
				}
			}
		}
		if got := nobody.Must(t, "read", v.Path("pub/file")); got != "nobody's data" {
			t.Fatalf("nobody reads %q back", got)
		}
		nobody.Must(t, "append", v.Path("pub/file"), " and more")
		mntCheckFile(t, v.Path("pub/file"), []byte("nobody's data and more"))
		// nobody sees its own attributes.
		if got := nobody.Must(t, "stat", v.Path("pub/dir/nested")); got != fmt.Sprintf("%d %d 100600 6", fusetest.Nobody, fusetest.Nobody) {
			t.Fatalf("nobody stats its file: %q", got)
		}
	})
	t.Run("setgid-dir", func(t *testing.T) {
		// In a set-group-ID dir new entries take the dir's group.
		if err := os.Mkdir(v.Path("pub/grp"), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(v.Path("pub/grp"), 0, 100); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(v.Path("pub/grp"), 0o2777); err != nil {
			t.Fatal(err)
		}
		nobody.Must(t, "create", v.Path("pub/grp/f"), "644", "g")
		nobody.Must(t, "mkdir", v.Path("pub/grp/d"), "755")
		for _, name := range []string{"pub/grp/f", "pub/grp/d"} {
			if st := mntLstat(t, v.Path(name)); st.Uid != fusetest.Nobody || st.Gid != 100 {
				t.Errorf("%s: owner %d:%d, want %d:100", name, st.Uid, st.Gid, fusetest.Nobody)
			}
		}
		if st := mntLstat(t, v.Path("pub/grp/d")); st.Mode&unix.S_ISGID == 0 {
			t.Errorf("pub/grp/d: mode %o, want set-group-ID inherited", st.Mode)
		}
	})
	t.Run("denied", func(t *testing.T) {
		for _, c := range []struct {
			name string
			h    *fusetest.User
			args []string
			want syscall.Errno
		}{
			{"read-private", nobody, []string{"read", v.Path("private")}, syscall.EACCES},
			{"write-private", nobody, []string{"write", v.Path("private"), "x"}, syscall.EACCES},
			{"create-in-rootdir", nobody, []string{"create", v.Path("rootdir/x"), "644", "x"}, syscall.EACCES},
			{"mkdir-in-rootdir", nobody, []string{"mkdir", v.Path("rootdir/x"), "755"}, syscall.EACCES},
			{"unlink-in-rootdir", nobody, []string{"unlink", v.Path("rootdir/readable")}, syscall.EACCES},
			{"write-readonly-file", nobody, []string{"write", v.Path("rootdir/readable"), "x"}, syscall.EACCES},
			{"chmod-roots-file", nobody, []string{"chmod", v.Path("pub/rootfile"), "666"}, syscall.EPERM},
			{"chown-own-file-to-root", nobody, []string{"chown", v.Path("pub/file"), "0", "0"}, syscall.EPERM},
			{"utimes-roots-file", nobody, []string{"utimes", v.Path("pub/rootfile"), "1000000000"}, syscall.EPERM},
			{"unlink-sticky", nobody, []string{"unlink", v.Path("pub/rootfile")}, syscall.EPERM},
			{"rename-sticky", nobody, []string{"rename", v.Path("pub/rootfile"), v.Path("pub/stolen")}, syscall.EPERM},
			{"other-reads-nobodys-0600", other, []string{"read", v.Path("pub/dir/nested")}, syscall.EACCES},
			{"other-unlinks-nobodys-file", other, []string{"unlink", v.Path("pub/file")}, syscall.EPERM},
		} {
			t.Run(c.name, func(t *testing.T) {
				if _, errno := c.h.Do(t, c.args...); errno != c.want {
					t.Fatalf("%v: errno %v (%d), want %v", c.args, errno, errno, c.want)
				}
			})
		}
		mntCheckFile(t, v.Path("private"), []byte("root's secret"))
		mntCheckFile(t, v.Path("pub/rootfile"), []byte("root's"))
	})
	t.Run("allowed", func(t *testing.T) {
		if got := nobody.Must(t, "read", v.Path("rootdir/readable")); got != "for all" {
			t.Fatalf("nobody reads %q", got)
		}
		nobody.Must(t, "chmod", v.Path("pub/file"), "600")
		nobody.Must(t, "rename", v.Path("pub/file"), v.Path("pub/file2"))
		// Root reads a file private to nobody.
		mntCheckFile(t, v.Path("pub/file2"), []byte("nobody's data and more"))
		nobody.Must(t, "unlink", v.Path("pub/file2"))
		nobody.Must(t, "unlink", v.Path("pub/dir/nested"))
		nobody.Must(t, "rmdir", v.Path("pub/dir"))
	})
}

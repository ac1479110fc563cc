package fusetest_test

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestBackingPath finds the backing entry of a dir, a file in it, a
// symlink and a FIFO, with names in clear and encrypted: each is the
// entry of the cipher dir with the inode the mount shows, below its
// parent's entry, and the plaintext name appears in it only when names
// are in clear; DaemonHolds sees a file held open through it.
func TestBackingPath(t *testing.T) {
	for _, c := range []struct {
		names string
		init  []string
	}{{"encrypted", nil}, {"plain", []string{"--plaintext-names"}}} {
		t.Run("names="+c.names, func(t *testing.T) {
			v := suite.StartVolume(t, fusetest.CLIOptions{InitArgs: c.init})
			if err := os.Mkdir(v.Path("dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(v.Path("dir/file"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("file", v.Path("dir/link")); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mkfifo(v.Path("dir/fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := v.BackingPath(t, "dir")
			for _, name := range []string{"dir", "dir/file", "dir/link", "dir/fifo"} {
				back := v.BackingPath(t, name)
				var plain, cipher unix.Stat_t
				if err := unix.Lstat(v.Path(name), &plain); err != nil {
					t.Fatal(err)
				}
				if err := unix.Lstat(back, &cipher); err != nil {
					t.Fatalf("%s: backing entry %s: %v", name, back, err)
				}
				if cipher.Ino != plain.Ino || cipher.Mode&unix.S_IFMT != plain.Mode&unix.S_IFMT {
					t.Errorf("%s: backing entry %s is inode %d mode %o, the mount shows %d %o", name, back, cipher.Ino, cipher.Mode, plain.Ino, plain.Mode)
				}
				if name != "dir" && filepath.Dir(back) != dir {
					t.Errorf("%s: backing entry %s is not in the dir's %s", name, back, dir)
				}
				inClear := back == v.CipherPath(name)
				if inClear != (c.names == "plain") {
					t.Errorf("%s: backing entry %s, names %s", name, back, c.names)
				}
			}
			f, err := os.Open(v.Path("dir/file"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if held := v.DaemonHolds(t, "dir/file"); len(held) != 1 {
				t.Errorf("a file held open: the daemon holds %d descriptors of it, want 1", len(held))
			}
		})
	}
}

package fs_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// longTargetPaths are the plaintext paths whose symlinks the long-target
// tests read: every name their operations make, move or remove.
var longTargetPaths = []string{"a", "b", "h", "d/b", "d/h"}

// readTargets returns the target of every symlink of longTargetPaths in
// m ("" for none), failing on any other error: a symlink without its side
// file, or with another's, reads wrong or fails here.
func readTargets(t *testing.T, m *fusetest.InProcess) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, p := range longTargetPaths {
		target, err := os.Readlink(m.Path(p))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("readlink %s: %v", p, err)
		}
		got[p] = target
	}
	return got
}

// sameTargets reports the first path whose target differs between got
// and want, "" if none.
func sameTargets(got, want map[string]string) string {
	for _, p := range longTargetPaths {
		if got[p] != want[p] {
			return p
		}
	}
	return ""
}

// copyTree copies the directory from to to, keeping symlinks, modes and
// hard links.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", "--", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", from, err, out)
	}
}

// targetSides returns the long-target side files of the cipher dir's root
// and of its directory d (rel path -> content).
func targetSides(t *testing.T, root, d string) map[string][]byte {
	t.Helper()
	sides := map[string][]byte{}
	for _, dir := range []string{root, d} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".target") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, filepath.Join(dir, e.Name()))
			sides[rel] = b
		}
	}
	return sides
}

// addSides writes into the cipher dir root every side file of sides it
// lacks, as a crash leaves one made before, or not yet removed after, the
// step that moves the entries.
func addSides(t *testing.T, root string, sides map[string][]byte) {
	t.Helper()
	for rel, b := range sides {
		p := filepath.Join(root, rel)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.WriteFile(p, b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNamesLongTargetCrash: every operation on a symlink whose target is
// in an ID-named side file makes its side files where the symlink goes
// before the one step that moves its entries, and removes those it left
// after. A kill between any two of its steps leaves the cipher dir as
// before plus side files copied already, or as after plus side files not
// yet removed: both are built here from the two states the operation
// leaves, and each must read as the old or the new state, list no side
// file and let its directory be removed.
func TestNamesLongTargetCrash(t *testing.T) {
	long1 := strings.Repeat("1", names.MaxTargetLen)
	long2 := strings.Repeat("2", names.MaxTargetLen-1)
	symlink := func(target, p string) func(*testing.T, *fusetest.InProcess) {
		return func(t *testing.T, m *fusetest.InProcess) {
			if err := os.Symlink(target, m.Path(p)); err != nil {
				t.Fatal(err)
			}
		}
	}
	link := func(from, to string) func(*testing.T, *fusetest.InProcess) {
		return func(t *testing.T, m *fusetest.InProcess) {
			if err := os.Link(m.Path(from), m.Path(to)); err != nil {
				t.Fatal(err)
			}
		}
	}
	rename := func(from, to string, flags uint) func(*testing.T, *fusetest.InProcess) {
		return func(t *testing.T, m *fusetest.InProcess) {
			if err := unix.Renameat2(unix.AT_FDCWD, m.Path(from), unix.AT_FDCWD, m.Path(to), flags); err != nil {
				t.Fatal(err)
			}
		}
	}
	unlink := func(p string) func(*testing.T, *fusetest.InProcess) {
		return func(t *testing.T, m *fusetest.InProcess) {
			if err := os.Remove(m.Path(p)); err != nil {
				t.Fatal(err)
			}
		}
	}
	type step = func(*testing.T, *fusetest.InProcess)
	for _, tc := range []struct {
		op    string
		setup []step
		do    step
	}{
		{"symlink", nil, symlink(long1, "a")},
		{"rename-over", []step{symlink(long1, "a"), symlink(long2, "b")}, rename("a", "b", 0)},
		{"rename-over-short", []step{symlink("short", "a"), symlink(long2, "b")}, rename("a", "b", 0)},
		{"rename-over-linked", []step{symlink(long1, "a"), symlink(long2, "b"), link("b", "h")}, rename("a", "b", 0)},
		{"exchange", []step{symlink(long1, "a"), symlink(long2, "b")}, rename("a", "b", unix.RENAME_EXCHANGE)},
		{"exchange-short", []step{symlink(long1, "a"), symlink("short", "b")}, rename("a", "b", unix.RENAME_EXCHANGE)},
		{"rename-across", []step{symlink(long1, "a")}, rename("a", "d/b", 0)},
		{"rename-across-over", []step{symlink(long1, "a"), symlink(long2, "d/b")}, rename("a", "d/b", 0)},
		{"rename-across-linked", []step{symlink(long1, "a"), link("a", "h")}, rename("a", "d/b", 0)},
		{"exchange-across", []step{symlink(long1, "a"), symlink(long2, "d/b")}, rename("a", "d/b", unix.RENAME_EXCHANGE)},
		{"link-across", []step{symlink(long1, "a")}, link("a", "d/h")},
		{"unlink", []step{symlink(long1, "a")}, unlink("a")},
		{"unlink-linked", []step{symlink(long1, "a"), link("a", "h")}, unlink("a")},
	} {
		t.Run("op="+tc.op, func(t *testing.T) {
			m, c := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.setup {
				s(t, m)
			}
			before := readTargets(t, m)
			d := cipherPath(t, m, c, "d")
			sidesBefore := targetSides(t, m.Cipher, d)
			snap := filepath.Join(t.TempDir(), "before")
			copyTree(t, m.Cipher, snap)
			tc.do(t, m)
			after := readTargets(t, m)
			sidesAfter := targetSides(t, m.Cipher, d)
			m.Unmount()
			for _, crash := range []struct {
				state string
				want  map[string]string
				build func()
			}{
				{"after", after, func() {}},
				{"before-move", before, func() {
					if err := os.RemoveAll(m.Cipher); err != nil {
						t.Fatal(err)
					}
					copyTree(t, snap, m.Cipher)
					addSides(t, m.Cipher, sidesAfter)
				}},
				{"after-move", after, func() {
					if err := os.RemoveAll(m.Cipher); err != nil {
						t.Fatal(err)
					}
					copyTree(t, filepath.Join(filepath.Dir(snap), "after"), m.Cipher)
					addSides(t, m.Cipher, sidesBefore)
				}},
			} {
				if crash.state == "after" {
					copyTree(t, m.Cipher, filepath.Join(filepath.Dir(snap), "after"))
				}
				crash.build()
				mark := m.Log.Mark()
				m.Mount()
				if p := sameTargets(readTargets(t, m), crash.want); p != "" {
					t.Errorf("crash=%s: %s reads %d bytes, want %d", crash.state, p, len(readTargets(t, m)[p]), len(crash.want[p]))
				}
				for _, dir := range []string{".", "d"} {
					for _, n := range list(t, m.Path(dir)) {
						if strings.Contains(n, ".") {
							t.Errorf("crash=%s: %s lists %q", crash.state, dir, n)
						}
					}
				}
				if log := m.Log.Since(mark); strings.Contains(log, "level=error") {
					t.Errorf("crash=%s: the mount logged an error:\n%s", crash.state, log)
				}
				m.Unmount()
			}
			m.Mount()
			// The directory d empties and goes, orphan side files with it.
			for _, p := range []string{"d/b", "d/h"} {
				if err := os.Remove(m.Path(p)); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
			}
			if err := os.Remove(m.Path("d")); err != nil {
				t.Errorf("rmdir d with orphan side files: %v", err)
			}
		})
	}
}

// TestNamesLongTargetOldForm: a symlink of the earlier form, its backing
// target the bare marker and its stored target in the side file named by
// its entry, still reads, and renames, links and unlinks keep it reading
// and leave no side file of it behind.
func TestNamesLongTargetOldForm(t *testing.T) {
	long := strings.Repeat("o", names.MaxTargetLen)
	for _, tc := range []struct {
		op   string
		do   func(*testing.T, *fusetest.InProcess)
		want map[string]string // path -> target after the op
	}{
		{"read", func(*testing.T, *fusetest.InProcess) {}, map[string]string{"a": long}},
		{"rename", func(t *testing.T, m *fusetest.InProcess) { mustRename(t, m, "a", "b", 0) }, map[string]string{"b": long}},
		{"rename-across", func(t *testing.T, m *fusetest.InProcess) { mustRename(t, m, "a", "d/b", 0) }, map[string]string{"d/b": long}},
		{"rename-over-new", func(t *testing.T, m *fusetest.InProcess) { mustRename(t, m, "a", "b", 0) }, map[string]string{"b": long}},
		{"exchange-new", func(t *testing.T, m *fusetest.InProcess) {
			mustRename(t, m, "a", "b", unix.RENAME_EXCHANGE)
		}, map[string]string{"a": "n", "b": long}},
		{"link-unlink", func(t *testing.T, m *fusetest.InProcess) {
			if err := os.Link(m.Path("a"), m.Path("d/h")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(m.Path("a")); err != nil {
				t.Fatal(err)
			}
		}, map[string]string{"d/h": long}},
		{"unlink", func(t *testing.T, m *fusetest.InProcess) {
			if err := os.Remove(m.Path("a")); err != nil {
				t.Fatal(err)
			}
		}, map[string]string{}},
	} {
		t.Run("op="+tc.op, func(t *testing.T) {
			m, c := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(tc.op, "-new") {
				if err := os.Symlink(strings.Repeat("n", names.MaxTargetLen-1), m.Path("b")); err != nil {
					t.Fatal(err)
				}
				if tc.op == "exchange-new" {
					tc.want["a"] = strings.Repeat("n", names.MaxTargetLen-1)
				}
			}
			m.Unmount()
			enc, err := c.EncryptTarget(long)
			if err != nil {
				t.Fatal(err)
			}
			a := cipherPath(t, m, c, "a")
			if err := os.Symlink("kmsfs.longtarget", a); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(a+".target", []byte(enc), 0o400); err != nil {
				t.Fatal(err)
			}
			m.Mount()
			tc.do(t, m)
			m.Remount()
			for _, p := range longTargetPaths {
				if got, err := os.Readlink(m.Path(p)); got != tc.want[p] || (err != nil) != (tc.want[p] == "") {
					t.Errorf("readlink %s: %d bytes, %v; want %d bytes", p, len(got), err, len(tc.want[p]))
				}
			}
			// Each old-form side file is its entry's: none is left
			// without its entry.
			d := cipherPath(t, m, c, "d")
			for rel := range targetSides(t, m.Cipher, d) {
				entry := strings.TrimSuffix(filepath.Join(m.Cipher, rel), ".target")
				if !strings.Contains(filepath.Base(entry), ".") {
					if _, err := os.Lstat(entry); err != nil {
						t.Errorf("old-form side file %s left without its entry", rel)
					}
				}
			}
		})
	}
}

// mustRename renames from to to in m with renameat2's flags.
func mustRename(t *testing.T, m *fusetest.InProcess, from, to string, flags uint) {
	t.Helper()
	if err := unix.Renameat2(unix.AT_FDCWD, m.Path(from), unix.AT_FDCWD, m.Path(to), flags); err != nil {
		t.Fatalf("rename %s %s: %v", from, to, err)
	}
}

// TestNamesLongTargetAttack: a planted marker whose ID is malformed (so
// that it might name any file), or a side file that is a symlink or too
// large, is refused with EIO and logged: never followed, never read as a
// target.
func TestNamesLongTargetAttack(t *testing.T) {
	good := strings.Repeat("A", 22)
	for _, tc := range []struct {
		attack string
		marker string
		side   string // planted in the symlink's directory
		kind   string // "file", "symlink" or "large"
	}{
		{"id=short", "kmsfs.longtarget.AAAA", "kmsfs.TAAAA.target", "file"},
		{"id=dotdot", "kmsfs.longtarget.../../../../etc/pas", "kmsfs.T.../../../../etc/pas.target", "file"},
		{"id=bad-base64", "kmsfs.longtarget." + strings.Repeat("!", 22), "kmsfs.T" + strings.Repeat("!", 22) + ".target", "file"},
		{"id=not-strict", "kmsfs.longtarget." + strings.Repeat("A", 21) + "B", "kmsfs.T" + strings.Repeat("A", 21) + "B.target", "file"},
		{"id=suffixed", "kmsfs.longtargetX", "", "file"},
		{"side=symlink", "kmsfs.longtarget." + good, "kmsfs.T" + good + ".target", "symlink"},
		{"side=large", "kmsfs.longtarget." + good, "kmsfs.T" + good + ".target", "large"},
	} {
		t.Run("attack="+tc.attack, func(t *testing.T) {
			m, c := mountNames(t)
			m.Unmount()
			enc, err := c.EncryptTarget(strings.Repeat("x", names.MaxTargetLen))
			if err != nil {
				t.Fatal(err)
			}
			// What a followed side file would give: a valid target.
			elsewhere := filepath.Join(t.TempDir(), "target")
			if err := os.WriteFile(elsewhere, []byte(enc), 0o600); err != nil {
				t.Fatal(err)
			}
			a := cipherPath(t, m, c, "a")
			if err := os.Symlink(tc.marker, a); err != nil {
				t.Fatal(err)
			}
			if tc.side != "" && !strings.Contains(tc.side, "/") {
				side := filepath.Join(m.Cipher, tc.side)
				switch tc.kind {
				case "file":
					err = os.WriteFile(side, []byte(enc), 0o400)
				case "symlink":
					err = os.Symlink(elsewhere, side)
				case "large":
					err = os.WriteFile(side, []byte(enc+strings.Repeat("A", 4096)), 0o400)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			m.Mount()
			mark := m.Log.Mark()
			got, err := os.Readlink(m.Path("a"))
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("readlink: %d bytes, %v; want EIO", len(got), err)
			}
			if log := m.Log.Since(mark); !strings.Contains(log, "symlink") || !strings.Contains(log, "level=error") {
				t.Errorf("no error logged for the planted marker; log:\n%s", log)
			}
		})
	}
}

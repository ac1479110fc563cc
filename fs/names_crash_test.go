package fs_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// TestNamesEmptyDirLostID: an rmdir, or a rename of a directory over an
// empty one, removes the empty directory's kmsfs.dirid first (the backing
// directory must be empty to go), so a crash right after leaves the
// directory there, empty, without its ID. That is its old state, and it
// must list as such, with no error, and take new entries that a later
// mount still finds; a directory with entries that lost its ID still
// fails (TestNamesTampered).
func TestNamesEmptyDirLostID(t *testing.T) {
	long := strings.Repeat("l", 200)
	for _, tc := range []struct {
		crash string
		setup []string // files made in d before the crash (then unlinked behind the mount)
	}{
		{"rmdir", nil},
		{"rmdir,orphan-long-name-side", []string{long}},
	} {
		t.Run("crash="+tc.crash, func(t *testing.T) {
			m, c := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			var backings []string
			for _, f := range tc.setup {
				if err := os.WriteFile(m.Path("d/"+f), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				backings = append(backings, cipherPath(t, m, c, "d/"+f))
			}
			m.Unmount()
			// An unlink cut off after its entry went (the long name's side
			// file stays), then the rmdir cut off after the ID went.
			for _, b := range backings {
				if err := os.Remove(b); err != nil {
					t.Fatal(err)
				}
			}
			dir := cipherPath(t, m, c, "d")
			if err := os.Remove(filepath.Join(dir, names.DirIDFile)); err != nil {
				t.Fatal(err)
			}
			mark := m.Log.Mark()
			m.Mount()
			if got := list(t, m.Path("d")); len(got) != 0 {
				t.Errorf("d lists %q after the crash, want nothing", got)
			}
			if err := os.WriteFile(m.Path("d/"+long), []byte("after"), 0o644); err != nil {
				t.Fatalf("create in d after the crash: %v", err)
			}
			if log := m.Log.Since(mark); strings.Contains(log, "level=error") {
				t.Errorf("the mount logged an error for an empty directory:\n%s", log)
			}
			m.Remount()
			if got := list(t, m.Path("d")); !slices.Equal(got, []string{long}) {
				t.Errorf("d lists %d names after a remount, want the one made", len(got))
			}
			if b, err := os.ReadFile(m.Path("d/" + long)); err != nil || string(b) != "after" {
				t.Errorf("read the file made after the crash: %q, %v", b, err)
			}
		})
	}
}

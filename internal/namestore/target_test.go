package namestore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
)

// TestTargetSide: each form of a long-target marker names its side file,
// a fresh marker names one that IsTargetSide knows, and a malformed ID
// (planted to name another file) is refused, never turned into a name.
func TestTargetSide(t *testing.T) {
	id := strings.Repeat("A", 22)
	for _, tc := range []struct {
		marker   string
		wantSide string
		wantByID bool
		wantErr  bool
	}{
		{"kmsfs.longtarget", "e.target", false, false},
		{"kmsfs.longtarget." + id, "kmsfs.T" + id + ".target", true, false},
		{"Zm9vYmFyYmF6", "", false, false},
		{"kmsfs.longtarget.", "", false, true},
		{"kmsfs.longtarget.AAAA", "", false, true},
		{"kmsfs.longtarget." + id + "A", "", false, true},
		{"kmsfs.longtarget." + strings.Repeat("A", 21) + "B", "", false, true},
		{"kmsfs.longtarget.../../../../../etc/pas", "", false, true},
		{"kmsfs.longtarget." + strings.Repeat("!", 22), "", false, true},
		{"kmsfs.longtargetX", "", false, true},
	} {
		t.Run("marker="+tc.marker, func(t *testing.T) {
			side, byID, err := namestore.TargetSide("e", tc.marker)
			if side != tc.wantSide || byID != tc.wantByID || (err != nil) != tc.wantErr {
				t.Fatalf("TargetSide: %q, %v, %v; want %q, %v, error %v", side, byID, err, tc.wantSide, tc.wantByID, tc.wantErr)
			}
			if err != nil && !errors.Is(err, names.ErrInvalidName) {
				t.Fatalf("error %v does not wrap names.ErrInvalidName", err)
			}
			if byID != namestore.IsTargetSide(side) {
				t.Fatalf("IsTargetSide(%q) = %v, want %v", side, !byID, byID)
			}
		})
	}
	t.Run("marker=new", func(t *testing.T) {
		marker, side, err := namestore.NewTargetMarker()
		if err != nil {
			t.Fatal(err)
		}
		got, byID, err := namestore.TargetSide("e", marker)
		if err != nil || !byID || got != side || len(marker) != namestore.MarkerLen || !namestore.IsTargetSide(side) {
			t.Fatalf("new marker %q, side %q: TargetSide %q, %v, %v", marker, side, got, byID, err)
		}
	})
}

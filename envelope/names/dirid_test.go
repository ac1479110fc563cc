package names_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

func TestParseDirID(t *testing.T) {
	want := dirID(3)
	for _, n := range []int{0, 1, 15, 16, 17, 32} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			b := append(want.Bytes(), make([]byte, 32)...)[:n]
			got, err := names.ParseDirID(b)
			if n != 16 {
				if !errors.Is(err, names.ErrInvalidName) || got != (names.DirID{}) {
					t.Fatalf("ParseDirID of %d bytes: %x, %v", n, got, err)
				}
				return
			}
			if err != nil || got != want {
				t.Fatalf("ParseDirID: %x, %v; want %x", got, err, want)
			}
		})
	}
}

func TestNewDirID(t *testing.T) {
	a, err := names.NewDirID()
	if err != nil {
		t.Fatal(err)
	}
	b, err := names.NewDirID()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == (names.DirID{}) {
		t.Fatalf("NewDirID gave %x and %x", a, b)
	}
	if !bytes.Equal(a.Bytes(), a[:]) {
		t.Fatal("Bytes differs from the ID")
	}
}

func TestRootDirID(t *testing.T) {
	var v1, v2 [16]byte
	v2[15] = 1
	r1, r2 := names.RootDirID(v1), names.RootDirID(v2)
	if r1 != names.RootDirID(v1) {
		t.Fatal("RootDirID is not deterministic")
	}
	if r1 == r2 || r1 == names.DirID(v1) || r2 == names.DirID(v2) {
		t.Fatal("root directory IDs of two volumes collide, or equal the volume ID")
	}
}

// TestParseDirIDLink: a DirIDFile's target is read back as the ID it was
// written from, and every other form (wrong length, not base64url, stray
// bits in the last character, padding) is refused, so that a directory's
// ID has one stored form.
func TestParseDirIDLink(t *testing.T) {
	want := dirID(5)
	good := want.LinkTarget()
	last := good[len(good)-1:]
	stray := map[string]string{"A": "B", "Q": "R", "g": "h", "w": "x"}[last] // the last character carries 2 bits
	cases := []struct {
		name, target string
		ok           bool
	}{
		{"written", good, true},
		{"empty", "", false},
		{"short", good[:21], false},
		{"long", good + "A", false},
		{"padded", good + "==", false},
		{"std-alphabet", good[:21] + "+", false},
		{"stray-bits", good[:21] + stray, false},
		{"raw-bytes", string(want[:]), false},
		{"dot", good[:21] + ".", false},
	}
	if stray == "" {
		t.Fatalf("test ID's last character %q carries stray bits already", last)
	}
	for _, tc := range cases {
		t.Run("target="+tc.name, func(t *testing.T) {
			got, err := names.ParseDirIDLink(tc.target)
			if tc.ok {
				if err != nil || got != want {
					t.Fatalf("ParseDirIDLink(%q): %x, %v; want %x", tc.target, got, err, want)
				}
				return
			}
			if !errors.Is(err, names.ErrInvalidName) || got != (names.DirID{}) {
				t.Fatalf("ParseDirIDLink(%q): %x, %v; want ErrInvalidName", tc.target, got, err)
			}
		})
	}
}

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

package namestore_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
)

// openDir opens dir as a directory descriptor closed when the test ends.
func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestMkdir makes directories with short and long names and several
// modes: each appears with its mode, its own readable ID and (long names)
// its side file, no temporary name is left, and a second Mkdir of the
// same name fails with EEXIST and leaves the first as it was.
func TestMkdir(t *testing.T) {
	key := bytes.Repeat([]byte{7}, names.KeySize)
	c, err := names.New(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d", strings.Repeat("l", 200)} {
		for _, mode := range []uint32{0o755, 0o500, 0o000} {
			t.Run(fmt.Sprintf("len=%d,mode=%#o", len(name), mode), func(t *testing.T) {
				dir := t.TempDir()
				fd := openDir(t, dir)
				nm, err := c.Encrypt(names.DirID{}, name)
				if err != nil {
					t.Fatal(err)
				}
				if err := namestore.Mkdir(fd, nm, mode); err != nil {
					t.Fatalf("Mkdir: %v", err)
				}
				sub := filepath.Join(dir, nm.Backing)
				fi, err := os.Lstat(sub)
				if err != nil || !fi.IsDir() || uint32(fi.Mode().Perm()) != mode {
					t.Fatalf("made %v, %v; want a directory of mode %#o", fi, err, mode)
				}
				id, err := namestore.ReadDirID(openDir(t, sub))
				if err != nil || id == (names.DirID{}) {
					t.Fatalf("its ID: %v, %v", id, err)
				}
				if side, err := os.ReadFile(sub + names.LongSuffix); (nm.Side != nil) != (err == nil) || !bytes.Equal(side, nm.Side) {
					t.Fatalf("side file %q, %v; want %q", side, err, nm.Side)
				}
				if err := namestore.Mkdir(fd, nm, mode); !errors.Is(err, unix.EEXIST) {
					t.Fatalf("second Mkdir: %v; want EEXIST", err)
				}
				if again, err := namestore.ReadDirID(openDir(t, sub)); err != nil || again != id {
					t.Fatalf("ID after the second Mkdir: %v, %v; want %v", again, err, id)
				}
				ents, err := os.ReadDir(dir)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), namestore.TmpPrefix) {
						t.Errorf("temporary %s left", e.Name())
					}
				}
			})
		}
	}
}

// TestReadDirIDRefused: an ID that is a regular file, or a link to
// something of the wrong form (planted in the cipher dir), is refused.
func TestReadDirIDRefused(t *testing.T) {
	for _, c := range []struct {
		name  string
		plant func(p string) error
	}{
		{"regular-file", func(p string) error { return os.WriteFile(p, []byte("AAAAAAAAAAAAAAAAAAAAAA"), 0o600) }},
		{"link-too-long", func(p string) error { return os.Symlink(strings.Repeat("A", 80), p) }},
		{"link-not-base64", func(p string) error { return os.Symlink(strings.Repeat("*", 22), p) }},
		{"missing", func(string) error { return nil }},
	} {
		t.Run("id="+c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.plant(filepath.Join(dir, names.DirIDFile)); err != nil {
				t.Fatal(err)
			}
			if id, err := namestore.ReadDirID(openDir(t, dir)); err == nil {
				t.Fatalf("ReadDirID gave %v", id)
			}
		})
	}
}

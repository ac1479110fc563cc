package fs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// BenchmarkNames compares the name-heavy operations with names in the
// clear and encrypted, each on a mount of its own: a create, stat and
// unlink of a new name (lookup, create and unlink each name it), a
// mkdir and rmdir (with names encrypted, the directory's ID link is made
// and removed, and the directory renamed into place), and a listing of a directory of 1000 entries (each name decrypted, then
// looked up by READDIRPLUS), made to reach the daemon by a change through
// the mount before each listing.
func BenchmarkNames(b *testing.B) {
	for _, encrypted := range []bool{false, true} {
		mount := func(b *testing.B) *fusetest.InProcess {
			o := kfs.Options{}
			if encrypted {
				o = withNames(b, o)
			}
			return fusetest.MountFS(b, 4096, o)
		}
		b.Run(fmt.Sprintf("op=create-stat-unlink,encrypted-names=%v", encrypted), func(b *testing.B) {
			m := mount(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p := m.Path(fmt.Sprintf("file-%d", i))
				i++
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					b.Fatal(err)
				}
				if _, err := os.Stat(p); err != nil {
					b.Fatal(err)
				}
				if err := os.Remove(p); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("op=mkdir-rmdir,encrypted-names=%v", encrypted), func(b *testing.B) {
			m := mount(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p := m.Path(fmt.Sprintf("dir-%d", i))
				i++
				if err := os.Mkdir(p, 0o755); err != nil {
					b.Fatal(err)
				}
				if err := os.Remove(p); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("op=readdir-1000,encrypted-names=%v", encrypted), func(b *testing.B) {
			m := mount(b)
			dir := m.Path("big")
			if err := os.Mkdir(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for i := range 1000 {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("entry-%04d", i)), nil, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			touch := filepath.Join(dir, "touch")
			b.ReportAllocs()
			for b.Loop() {
				if err := os.WriteFile(touch, nil, 0o644); err != nil {
					b.Fatal(err)
				}
				ents, err := os.ReadDir(dir)
				if err != nil || len(ents) != 1001 {
					b.Fatalf("listing: %d entries, %v", len(ents), err)
				}
				if err := os.Remove(touch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

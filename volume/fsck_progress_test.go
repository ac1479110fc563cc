package volume_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/volume"
)

// TestFsckProgress: the progress callback starts with the totals of the
// first pass and nothing done, never goes back, and ends with every file
// and every cipher byte counted, matching the report; a file bigger than
// one read moves the count before it is done.
func TestFsckProgress(t *testing.T) {
	for _, sizes := range [][]int{{0}, {1, 5000, 4096}, {3 << 20}} {
		t.Run(fmt.Sprintf("sizes=%v", sizes), func(t *testing.T) {
			_, v := cryptVolume(t)
			var want int64
			for i, n := range sizes {
				p := filepath.Join(v.Dir, fmt.Sprintf("f%d", i))
				encryptTo(t, v, p, randomBytes(t, n))
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				want += fi.Size()
			}
			var seen []volume.FsckProgress
			r, err := v.Fsck(ctx(t), volume.FsckOptions{Progress: func(p volume.FsckProgress) { seen = append(seen, p) }})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if len(seen) == 0 {
				t.Fatal("progress never called")
			}
			first, last := seen[0], seen[len(seen)-1]
			if first.Files != 0 || first.Bytes != 0 || first.TotalFiles != int64(len(sizes)) || first.TotalBytes != want {
				t.Fatalf("first progress %+v; want totals %d files, %d bytes, nothing done", first, len(sizes), want)
			}
			if last.Files != r.Files || last.Bytes != want || r.Bytes != want || last.TotalBytes != want {
				t.Fatalf("last progress %+v, report %d files %d bytes; want %d bytes", last, r.Files, r.Bytes, want)
			}
			for i := 1; i < len(seen); i++ {
				if seen[i].Files < seen[i-1].Files || seen[i].Bytes < seen[i-1].Bytes {
					t.Fatalf("progress went back: %+v after %+v", seen[i], seen[i-1])
				}
			}
			if sizes[0] >= 3<<20 {
				mid := false
				for _, p := range seen {
					mid = mid || (p.Files == 0 && p.Bytes > 0)
				}
				if !mid {
					t.Fatalf("no progress inside the large file: %+v", seen)
				}
			}
		})
	}
}

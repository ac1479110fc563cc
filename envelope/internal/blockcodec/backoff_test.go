package blockcodec_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/internal/blockcodec"
)

// TestBackoff feeds a Backoff a file's blocks, each compressible or not,
// and checks which blocks it tries.
func TestBackoff(t *testing.T) {
	never := func(int) bool { return false }
	for _, tc := range []struct {
		name         string
		blocks       int
		compressible func(i int) bool
		wantTried    []int
	}{
		{"always", 8, func(int) bool { return true }, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		// Skips of 1, 2, 4 … 64, then 64 again.
		{"never", 220, never, []int{0, 2, 5, 10, 19, 36, 69, 134, 199}},
		// Blocks 0-2 incompressible, then all compressible: the try at 5
		// compresses, so every block after it is tried again.
		{"turns-compressible", 9, func(i int) bool { return i >= 3 }, []int{0, 2, 5, 6, 7, 8}},
		// A compressing try resets the skip to 1, not to where it was.
		{"reset", 16, func(i int) bool { return i == 5 }, []int{0, 2, 5, 6, 8, 11}},
	} {
		t.Run(fmt.Sprintf("pattern=%s,blocks=%d", tc.name, tc.blocks), func(t *testing.T) {
			var b blockcodec.Backoff
			var tried []int
			for i := range tc.blocks {
				if b.Try() {
					tried = append(tried, i)
					b.Record(tc.compressible(i))
				}
			}
			if !slices.Equal(tried, tc.wantTried) {
				t.Fatalf("tried %v, want %v", tried, tc.wantTried)
			}
		})
	}
}

// TestBackoffRandomData: on a long file that never compresses, a Backoff
// tries about one block in 65.
func TestBackoffRandomData(t *testing.T) {
	for _, blocks := range []int{1 << 10, 1 << 16} {
		t.Run(fmt.Sprintf("blocks=%d", blocks), func(t *testing.T) {
			var b blockcodec.Backoff
			tries := 0
			for range blocks {
				if b.Try() {
					tries++
					b.Record(false)
				}
			}
			if limit := blocks/65 + 8; tries > limit {
				t.Fatalf("%d tries in %d blocks, want at most %d", tries, blocks, limit)
			}
		})
	}
}

package blockcodec_test

import (
	"fmt"
	"runtime"
	"testing"
)

// TestNoAllocSteadyState: once the pools are warm, compressing and
// decompressing a block allocates nothing, whether the block compresses or
// not, and whether dst has the room to decode in place or not.
func TestNoAllocSteadyState(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	for _, cc := range codecCases {
		for _, b := range blockSizes {
			c := newCodec(t, cc.alg, cc.level, b)
			text, stored := compressedText(t, c, 11, b)
			random := randomBytes(12, b)
			enc := make([]byte, 0, b)
			inPlace := make([]byte, 0, c.DecodeRoom())
			exact := make([]byte, 0, b)
			var err error
			for _, op := range []struct {
				name string
				f    func()
			}{
				{"compress-text", func() { c.Compress(enc, text) }},
				{"compress-random", func() { c.Compress(enc, random) }},
				{"decompress-in-place", func() { _, err = c.Decompress(inPlace, stored, b) }},
				{"decompress-via-pool", func() { _, err = c.Decompress(exact, stored, b) }},
			} {
				t.Run(fmt.Sprintf("codec=%s,B=%d,op=%s", cc.name, b, op.name), func(t *testing.T) {
					// Warm every pooled state: the pools hand them out in
					// turn, and each grows its tables on first use.
					for range 2*runtime.GOMAXPROCS(0) + 1 {
						op.f()
					}
					if n := testing.AllocsPerRun(20, op.f); n != 0 {
						t.Fatalf("%v allocations per block", n)
					}
					if err != nil {
						t.Fatalf("Decompress: %v", err)
					}
				})
			}
		}
	}
}

package blockcodec_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/internal/blockcodec"
)

// sampledSizes are the plaintext lengths a round trip covers for block
// size b: the boundaries, sizes around the zstd frame header's size-field
// steps (256, 65792) and its 128 KiB block limit, and seeded random ones.
func sampledSizes(b int) []int {
	sizes := []int{0, 1, 2, 31, 32, 33, 255, 256, 257, 1023, 1024, 1025, 4095, 4096,
		65535, 65791, 65792, 65793, 128<<10 - 1, 128 << 10, 128<<10 + 1, b/2 + 7, b - 1, b}
	r := randomBytes(uint64(b), 16)
	for i := 0; i < len(r); i += 4 {
		sizes = append(sizes, int(uint32(r[i])|uint32(r[i+1])<<8|uint32(r[i+2])<<16|uint32(r[i+3])<<24)%(b+1))
	}
	var out []int
	for _, s := range sizes {
		if s <= b {
			out = append(out, s)
		}
	}
	return out
}

// TestRoundTrip compresses and decompresses blocks of sampled sizes from 0
// to B, of text and of random data, for every codec and block size: what
// Decompress returns is what Compress was given, and a block stored as is
// is src itself.
func TestRoundTrip(t *testing.T) {
	for _, cc := range codecCases {
		for _, b := range blockSizes {
			c := newCodec(t, cc.alg, cc.level, b)
			text, random := textBytes(1, b), randomBytes(2, b)
			for _, size := range sampledSizes(b) {
				for _, data := range []struct {
					name string
					src  []byte
				}{{"text", text[:size]}, {"random", random[:size]}} {
					t.Run(sizeName(cc.name, b, size)+",data="+data.name, func(t *testing.T) {
						prefix := []byte("kept")
						stored, compressed := c.Compress(bytes.Clone(prefix), data.src)
						if !compressed {
							if &stored[:1][0] != &data.src[:1][0] && size > 0 {
								t.Fatalf("stored as is, but not src itself")
							}
							if !bytes.Equal(stored, data.src) {
								t.Fatalf("stored as is, but differs from src")
							}
							if data.name == "text" && size >= 512 {
								t.Fatalf("%d bytes of text not compressed", size)
							}
							return
						}
						if data.name == "random" {
							t.Fatalf("%d random bytes stored compressed", size)
						}
						if !bytes.HasPrefix(stored, prefix) {
							t.Fatalf("Compress lost the bytes already in dst")
						}
						enc := stored[len(prefix):]
						if saving := size - len(enc); saving < size/32 || saving <= 0 {
							t.Fatalf("stored compressed in %d bytes, saving %d of %d", len(enc), saving, size)
						}
						got, err := c.Decompress(bytes.Clone(prefix), enc, size)
						if err != nil {
							t.Fatalf("Decompress: %v", err)
						}
						if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], data.src) {
							t.Fatalf("round trip changed the block")
						}
					})
				}
			}
		}
	}
}

// TestSavingThreshold stores a block compressed only when that saves a
// 32nd of it: random data behind a run of zeros saves at most the run, so
// a run of B/32 can never qualify, and one of B/8 always does.
func TestSavingThreshold(t *testing.T) {
	for _, cc := range codecCases {
		for _, b := range blockSizes {
			for _, tc := range []struct {
				zeros int
				want  bool
			}{{b / 32, false}, {b / 8, true}} {
				t.Run(fmt.Sprintf("codec=%s,B=%d,zeros=%d", cc.name, b, tc.zeros), func(t *testing.T) {
					c := newCodec(t, cc.alg, cc.level, b)
					src := randomBytes(3, b)
					clear(src[:tc.zeros])
					stored, compressed := c.Compress(nil, src)
					if compressed != tc.want {
						t.Fatalf("compressed = %v (%d bytes), want %v", compressed, len(stored), tc.want)
					}
				})
			}
		}
	}
}

// TestNewRefuses checks the block size and level New accepts.
func TestNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		alg       blockcodec.Algorithm
		level     blockcodec.Level
		blockSize int
	}{
		{blockcodec.Zstd, blockcodec.LevelDefault, 2 << 10},
		{blockcodec.Zstd, blockcodec.LevelDefault, 2 << 20},
		{blockcodec.Zstd, blockcodec.LevelDefault, 48 << 10},
		{blockcodec.S2, blockcodec.LevelFastest, 64 << 10},
		{blockcodec.Zstd, blockcodec.Level(9), 64 << 10},
		{blockcodec.Algorithm(0), blockcodec.LevelDefault, 64 << 10},
		{blockcodec.Algorithm(3), blockcodec.LevelDefault, 64 << 10},
	} {
		t.Run(fmt.Sprintf("alg=%v,level=%d,B=%d", tc.alg, tc.level, tc.blockSize), func(t *testing.T) {
			if _, err := blockcodec.New(tc.alg, tc.level, tc.blockSize); err == nil {
				t.Fatalf("New accepted it")
			}
		})
	}
}

// TestCompressPanicsAboveBlockSize: a block longer than B is a caller's
// bug, never silently stored.
func TestCompressPanicsAboveBlockSize(t *testing.T) {
	for _, cc := range codecCases {
		t.Run("codec="+cc.name, func(t *testing.T) {
			c := newCodec(t, cc.alg, cc.level, 4<<10)
			defer func() {
				if recover() == nil {
					t.Fatalf("Compress of 4097 bytes did not panic")
				}
			}()
			c.Compress(nil, make([]byte, 4<<10+1))
		})
	}
}

// TestConcurrent runs more goroutines than the pools hold, each
// compressing and decompressing its own blocks: every result must equal
// the serial one (run under -race by make race).
func TestConcurrent(t *testing.T) {
	const goroutines, rounds = 8, 16
	for _, cc := range codecCases {
		t.Run("codec="+cc.name, func(t *testing.T) {
			const b = 64 << 10
			c := newCodec(t, cc.alg, cc.level, b)
			srcs := make([][]byte, goroutines)
			want := make([][]byte, goroutines)
			for g := range srcs {
				srcs[g], want[g] = compressedText(t, c, uint64(g), b-g)
			}
			var wg sync.WaitGroup
			errs := make(chan error, goroutines)
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					enc := make([]byte, 0, b)
					dec := make([]byte, 0, b)
					for range rounds {
						enc, _ = c.Compress(enc[:0], srcs[g])
						if !bytes.Equal(enc, want[g]) {
							errs <- fmt.Errorf("goroutine %d: compressed form differs from the serial one", g)
							return
						}
						var err error
						dec, err = c.Decompress(dec[:0], enc, len(srcs[g]))
						if err != nil || !bytes.Equal(dec, srcs[g]) {
							errs <- fmt.Errorf("goroutine %d: round trip failed: %v", g, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// TestDecompressWrongLength: a valid block opened with another length, or
// a length above B, is refused with ErrCorrupt.
func TestDecompressWrongLength(t *testing.T) {
	for _, cc := range codecCases {
		const b = 4 << 10
		c := newCodec(t, cc.alg, cc.level, b)
		_, stored := compressedText(t, c, 4, 3000)
		for _, plainLen := range []int{-1, 0, 2999, 3001, b, b + 1, 1 << 30} {
			t.Run(fmt.Sprintf("codec=%s,plainLen=%d", cc.name, plainLen), func(t *testing.T) {
				got, err := c.Decompress(nil, stored, plainLen)
				if !errors.Is(err, blockcodec.ErrCorrupt) {
					t.Fatalf("Decompress = %d bytes, %v; want ErrCorrupt", len(got), err)
				}
				if got != nil {
					t.Fatalf("Decompress returned %d bytes with its error", len(got))
				}
			})
		}
	}
}

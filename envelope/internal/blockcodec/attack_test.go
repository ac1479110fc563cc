package blockcodec_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/kmsfs/kmsfs/envelope/internal/blockcodec"
)

// bombSize is what the bombs declare or decode to: far more than any
// block size, so that decoding one would show in the heap.
const bombSize = 64 << 20

// attack is a stored block someone crafted, opened as a block of plainLen
// bytes.
type attack struct {
	name     string
	stored   []byte
	plainLen int
}

// zstdAttacks are the crafted zstd frames for block size b.
func zstdAttacks(t *testing.T, c *blockcodec.Codec, b int) []attack {
	t.Helper()
	text, valid := compressedText(t, c, 5, b)
	// A liar with compressed blocks: a frame of 4B zeros from an encoder
	// without our limits, its header rewritten to declare B.
	big, err := zstd.NewWriter(nil, zstd.WithWindowSize(b), zstd.WithEncoderCRC(false), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatalf("zstd.NewWriter: %v", err)
	}
	var h zstd.Header
	blocks, err := h.DecodeAndStrip(big.EncodeAll(make([]byte, 4*b), nil))
	if err != nil {
		t.Fatalf("reading our own frame's header: %v", err)
	}
	noFCS := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte((bitsLen(b) - 10) << 3)}
	noFCS = append(noFCS, zstdRaw(true, text[:100])...)
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}
	return []attack{
		{"bomb-declared", zstdRLEBomb(bombSize, uint64(b), bombSize), b},
		{"bomb-declared-single-segment", zstdRLEBomb(bombSize, 0, bombSize), b},
		{"rle-decodes-past-declared", zstdRLEBomb(uint64(b), uint64(b), bombSize), b},
		{"compressed-decodes-past-declared", zstdFrame(uint64(b), 0, 0, false, blocks), b},
		{"compressed-decodes-past-declared-window", zstdFrame(uint64(b), uint64(b), 0, false, blocks), b},
		{"declares-less", zstdFrame(uint64(b-1), uint64(b), 0, false, zstdRaw(true, text[:b-1])), b},
		{"declares-more", zstdFrame(uint64(b), uint64(b), 0, false, zstdRaw(true, text[:b-1])), b - 1},
		{"window-above-block-size", zstdFrame(100, uint64(2*b), 0, false, zstdRaw(true, text[:100])), 100},
		{"window-at-block-size", zstdFrame(100, uint64(b), 0, false, zstdRaw(true, text[:100])), 100},
		{"no-content-size", noFCS, 100},
		{"dictionary", zstdFrame(100, 0, 7, false, zstdRaw(true, text[:100])), 100},
		{"checksum", zstdFrame(100, 0, 0, true, zstdRaw(true, text[:100])), 100},
		{"reserved-block-type", zstdFrame(100, 0, 0, false, append(zstdBlockHeader(true, 3, 100), text[:100]...)), 100},
		{"block-above-128k", zstdFrame(200<<10, 0, 0, false, zstdBlockHeader(true, 0, 200<<10), make([]byte, 200<<10)), min(200<<10, b)},
		{"no-last-block", zstdFrame(100, 0, 0, false, zstdRaw(false, text[:100])), 100},
		{"two-frames", append(bytes.Clone(valid), valid...), b},
		{"empty-frame-after", append(bytes.Clone(valid), zstdFrame(0, 0, 0, false, zstdRaw(true, nil))...), b},
		{"skippable-frame-after", append(bytes.Clone(valid), skippable...), b},
		{"skippable-frame-before", append(bytes.Clone(skippable), valid...), b},
		{"trailing-byte", append(bytes.Clone(valid), 0), b},
		{"garbage", randomBytes(6, 1000), b},
		{"zeros", make([]byte, 1000), b},
		{"empty", nil, b},
		{"s2-block", s2Block(uint64(b), text), b},
	}
}

// s2Attacks are the crafted s2 blocks for block size b.
func s2Attacks(t *testing.T, c *blockcodec.Codec, b int) []attack {
	t.Helper()
	text, valid := compressedText(t, c, 7, b)
	half := text[:b/2]
	return []attack{
		{"bomb-declared", s2Block(bombSize, []byte("A")), b},
		{"bomb-declared-max", s2Block(1<<32-1, []byte("A")), b},
		{"literals-past-declared", s2Block(uint64(b), text, text), b},
		{"literals-short-of-declared", s2Block(uint64(b), half), b},
		{"declares-less", s2Block(uint64(b-1), text), b},
		{"declares-more", s2Block(uint64(b), text[:b-1]), b - 1},
		{"varint-overflow", bytes.Repeat([]byte{0xff}, 11), b},
		{"two-blocks", append(bytes.Clone(valid), valid...), b},
		{"trailing-byte", append(bytes.Clone(valid), 0), b},
		{"garbage", randomBytes(8, 1000), b},
		{"empty", nil, b},
		{"zstd-frame", zstdFrame(uint64(b), 0, 0, false, zstdRaw(true, text)), b},
	}
}

// bitsLen is log2 of a power of two.
func bitsLen(n int) int {
	l := 0
	for 1<<l < n {
		l++
	}
	return l
}

// TestCraftedBlocksRefused opens crafted blocks as an attacker with the
// content key would write them: decompression bombs that declare 64 MiB,
// frames that decode past what they declare, a window above B,
// concatenated and skippable frames, dictionaries, checksums, garbage.
// Each is refused with ErrCorrupt, without output, and the heap grows by
// less than a block while it is refused.
func TestCraftedBlocksRefused(t *testing.T) {
	for _, cc := range []codecCase{codecCases[0], codecCases[2]} {
		for _, b := range blockSizes {
			c := newCodec(t, cc.alg, cc.level, b)
			attacks := zstdAttacks
			if cc.alg == blockcodec.S2 {
				attacks = s2Attacks
			}
			warmUp(t, c, b)
			for _, a := range attacks(t, c, b) {
				t.Run(fmt.Sprintf("codec=%s,B=%d,attack=%s", cc.name, b, a.name), func(t *testing.T) {
					dst := make([]byte, 0, b)
					var got []byte
					var err error
					// The least of a few runs: what the attack allocates
					// every time, not a one-off lazy initialisation (or,
					// under -race, a sync.Pool item the detector dropped).
					allocated := uint64(math.MaxUint64)
					for range 3 {
						allocated = min(allocated, heapGrowth(func() { got, err = c.Decompress(dst, a.stored, a.plainLen) }))
					}
					if !errors.Is(err, blockcodec.ErrCorrupt) {
						t.Fatalf("Decompress = %d bytes, %v; want ErrCorrupt", len(got), err)
					}
					if got != nil {
						t.Fatalf("Decompress returned %d bytes with its error", len(got))
					}
					if allocated >= uint64(b) {
						t.Fatalf("refusing it allocated %d bytes, the block size is %d", allocated, b)
					}
				})
			}
		}
	}
}

// TestTruncatedRefused cuts a valid stored block at every length: no
// prefix decodes.
func TestTruncatedRefused(t *testing.T) {
	for _, cc := range []codecCase{codecCases[0], codecCases[2]} {
		t.Run("codec="+cc.name, func(t *testing.T) {
			const b = 4 << 10
			c := newCodec(t, cc.alg, cc.level, b)
			_, stored := compressedText(t, c, 9, b)
			for n := range len(stored) {
				if _, err := c.Decompress(nil, stored[:n], b); !errors.Is(err, blockcodec.ErrCorrupt) {
					t.Fatalf("prefix of %d of %d bytes: %v, want ErrCorrupt", n, len(stored), err)
				}
			}
		})
	}
}

// warmUp decompresses a valid block often enough to initialise every
// pooled decoder state, so that the heap measured during an attack is the
// attack's alone.
func warmUp(t *testing.T, c *blockcodec.Codec, b int) {
	t.Helper()
	_, stored := compressedText(t, c, 10, b)
	dst := make([]byte, 0, b)
	for range 2*runtime.GOMAXPROCS(0) + 1 {
		if _, err := c.Decompress(dst, stored, b); err != nil {
			t.Fatalf("warm-up Decompress: %v", err)
		}
	}
}

// heapGrowth returns the bytes allocated on the heap while f ran.
func heapGrowth(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

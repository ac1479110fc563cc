package blockcodec_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/kmsfs/kmsfs/envelope/internal/blockcodec"
)

// fuzzAlgs and blockSizes index the codecs a fuzz input picks.
var fuzzAlgs = []blockcodec.Algorithm{blockcodec.Zstd, blockcodec.S2}

// fuzzCodecs returns one codec per algorithm and block size.
func fuzzCodecs(f *testing.F) [][]*blockcodec.Codec {
	cs := make([][]*blockcodec.Codec, len(fuzzAlgs))
	for i, alg := range fuzzAlgs {
		for _, b := range blockSizes {
			cs[i] = append(cs[i], newCodec(f, alg, blockcodec.LevelDefault, b))
		}
	}
	return cs
}

// FuzzDecompress opens arbitrary bytes as a stored block of any length:
// Decompress never panics, fails only with ErrCorrupt and then returns
// nothing, and when it succeeds returns exactly plainLen bytes after dst's
// own, the same bytes as the library's decoder without our limits.
func FuzzDecompress(f *testing.F) {
	codecs := fuzzCodecs(f)
	for i := range fuzzAlgs {
		for j, b := range blockSizes {
			c := codecs[i][j]
			for _, n := range []int{1000, 3000, b} {
				_, stored := compressedText(f, c, uint64(n), n)
				f.Add(uint8(i), uint8(j), n, stored)
				f.Add(uint8(i), uint8(j), n-1, stored)
			}
		}
		f.Add(uint8(i), uint8(0), 4096, []byte{})
	}
	f.Add(uint8(0), uint8(0), 4096, zstdRLEBomb(bombSize, 4096, 1<<20))
	f.Add(uint8(0), uint8(0), 4096, zstdRLEBomb(4096, 0, 1<<20))
	f.Add(uint8(0), uint8(1), 100, zstdFrame(100, 0, 0, false, zstdRaw(true, make([]byte, 100))))
	f.Add(uint8(1), uint8(0), 4096, s2Block(bombSize, []byte("A")))
	zref, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Fatalf("zstd.NewReader: %v", err)
	}
	f.Fuzz(func(t *testing.T, alg, size uint8, plainLen int, stored []byte) {
		c := codecs[int(alg)%len(codecs)][int(size)%len(blockSizes)]
		prefix := []byte("prefix")
		out, err := c.Decompress(bytes.Clone(prefix), stored, plainLen)
		if err != nil {
			if !errors.Is(err, blockcodec.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if out != nil {
				t.Fatalf("%d bytes returned with an error", len(out))
			}
			return
		}
		if len(out) != len(prefix)+plainLen || !bytes.HasPrefix(out, prefix) {
			t.Fatalf("returned %d bytes for a block of %d after %d of dst", len(out), plainLen, len(prefix))
		}
		// What passed the checks is one frame or block of at most B, so
		// the unlimited reference decoder is safe to run on it.
		var want []byte
		if c.Algorithm() == blockcodec.Zstd {
			want, err = zref.DecodeAll(stored, nil)
		} else {
			want, err = s2.Decode(nil, stored)
		}
		if err != nil || !bytes.Equal(out[len(prefix):], want) {
			t.Fatalf("decoded %d bytes; the reference decoder gives %d bytes, %v", plainLen, len(want), err)
		}
	})
}

// FuzzRoundTrip compresses arbitrary blocks: what is stored compressed
// decompresses to the block, and what is not is the block itself.
func FuzzRoundTrip(f *testing.F) {
	codecs := fuzzCodecs(f)
	for i := range fuzzAlgs {
		for j := range blockSizes {
			f.Add(uint8(i), uint8(j), textBytes(13, 5000))
			f.Add(uint8(i), uint8(j), randomBytes(14, 300))
			f.Add(uint8(i), uint8(j), []byte{})
		}
	}
	f.Fuzz(func(t *testing.T, alg, size uint8, src []byte) {
		c := codecs[int(alg)%len(codecs)][int(size)%len(blockSizes)]
		src = src[:min(len(src), c.BlockSize())]
		stored, compressed := c.Compress(nil, src)
		if !compressed {
			if !bytes.Equal(stored, src) {
				t.Fatalf("stored as is, but differs from src")
			}
			return
		}
		if len(src)-len(stored) < len(src)/32 || len(stored) >= len(src) {
			t.Fatalf("stored compressed in %d of %d bytes", len(stored), len(src))
		}
		got, err := c.Decompress(nil, stored, len(src))
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

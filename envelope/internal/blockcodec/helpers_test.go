package blockcodec_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/internal/blockcodec"
)

// blockSizes are the sizes the tests cover: the smallest, the default of
// a compressed volume, and the largest.
var blockSizes = []int{4 << 10, 64 << 10, 1 << 20}

// codecCase is one algorithm at one level.
type codecCase struct {
	name  string
	alg   blockcodec.Algorithm
	level blockcodec.Level
}

var codecCases = []codecCase{
	{"zstd", blockcodec.Zstd, blockcodec.LevelDefault},
	{"zstd-fastest", blockcodec.Zstd, blockcodec.LevelFastest},
	{"s2", blockcodec.S2, blockcodec.LevelDefault},
}

// newCodec returns a codec or fails the test.
func newCodec(tb testing.TB, alg blockcodec.Algorithm, level blockcodec.Level, blockSize int) *blockcodec.Codec {
	tb.Helper()
	c, err := blockcodec.New(alg, level, blockSize)
	if err != nil {
		tb.Fatalf("New(%v, %d, %d): %v", alg, level, blockSize, err)
	}
	return c
}

// randomBytes returns n bytes from a PRNG seeded by seed: incompressible,
// and the same in every run.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// textBytes returns n bytes of text-like data: words from a small
// vocabulary in a seeded order, which compresses about as well as source
// code.
func textBytes(seed uint64, n int) []byte {
	words := strings.Fields("func return if err != nil { } package import for range := " +
		"the block size of a file is fmt.Errorf byte int uint64 len cap append copy " +
		"struct type interface var const switch case default go defer select chan")
	r := rand.New(rand.NewPCG(seed, 2))
	var sb strings.Builder
	for sb.Len() < n {
		sb.WriteString(words[r.IntN(len(words))])
		if r.IntN(8) == 0 {
			sb.WriteString("\n\t")
		} else {
			sb.WriteByte(' ')
		}
	}
	return []byte(sb.String()[:n])
}

// compressedText returns n bytes of text from seed and their stored form,
// failing the test if the codec does not store them compressed.
func compressedText(tb testing.TB, c *blockcodec.Codec, seed uint64, n int) (text, stored []byte) {
	tb.Helper()
	text = textBytes(seed, n)
	stored, ok := c.Compress(nil, text)
	if !ok {
		tb.Fatalf("%v: %d bytes of text not compressed", c.Algorithm(), n)
	}
	return text, stored
}

// zstdFrame builds a zstd frame by hand, for attacks the encoder would
// never write: fcs is the declared content size (8-byte field), window the
// window size (0 = single segment, the window being the content size),
// dict a dictionary ID (0 = none), checksum adds the checksum flag and a
// 4-byte checksum after the blocks.
func zstdFrame(fcs uint64, window uint64, dict uint32, checksum bool, blocks ...[]byte) []byte {
	f := []byte{0x28, 0xb5, 0x2f, 0xfd}
	fhd := byte(3 << 6) // 8-byte content size
	if window == 0 {
		fhd |= 1 << 5
	}
	if checksum {
		fhd |= 1 << 2
	}
	if dict != 0 {
		fhd |= 3
	}
	f = append(f, fhd)
	if window != 0 {
		// window must be a power of two, 1 KiB or more.
		log := 0
		for 1<<log < window {
			log++
		}
		f = append(f, byte((log-10)<<3))
	}
	if dict != 0 {
		f = binary.LittleEndian.AppendUint32(f, dict)
	}
	f = binary.LittleEndian.AppendUint64(f, fcs)
	for _, b := range blocks {
		f = append(f, b...)
	}
	if checksum {
		f = append(f, 0, 0, 0, 0)
	}
	return f
}

// zstdBlockHeader is a block header: last flag, type, size.
func zstdBlockHeader(last bool, typ, size int) []byte {
	v := uint32(size)<<3 | uint32(typ)<<1
	if last {
		v |= 1
	}
	return []byte{byte(v), byte(v >> 8), byte(v >> 16)}
}

// zstdRLE is an RLE block: size copies of one byte.
func zstdRLE(last bool, size int) []byte {
	return append(zstdBlockHeader(last, 1, size), 'A')
}

// zstdRaw is a raw block holding data.
func zstdRaw(last bool, data []byte) []byte {
	return append(zstdBlockHeader(last, 0, len(data)), data...)
}

// zstdRLEBomb is a frame declaring fcs bytes whose RLE blocks decode to
// total bytes, in blocks of the largest size the format allows.
func zstdRLEBomb(fcs uint64, window uint64, total int) []byte {
	const blk = 128 << 10
	var blocks [][]byte
	for total > 0 {
		n := min(total, blk)
		total -= n
		blocks = append(blocks, zstdRLE(total == 0, n))
	}
	return zstdFrame(fcs, window, 0, false, blocks...)
}

// s2Block builds an s2 block declaring declared bytes followed by literal
// elements holding lits.
func s2Block(declared uint64, lits ...[]byte) []byte {
	b := binary.AppendUvarint(nil, declared)
	for _, l := range lits {
		n := len(l) - 1
		switch {
		case n < 60:
			b = append(b, byte(n)<<2)
		case n < 1<<8:
			b = append(b, 60<<2, byte(n))
		default:
			b = append(b, 61<<2, byte(n), byte(n>>8))
		}
		b = append(b, l...)
	}
	return b
}

// sizeName names a subtest by its parameters.
func sizeName(alg string, blockSize, size int) string {
	return fmt.Sprintf("codec=%s,B=%d,size=%d", alg, blockSize, size)
}

package blockcodec

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"slices"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// ErrCorrupt means a stored compressed block is not exactly what Compress
// writes for a block of the expected length: a size that differs from the
// one the caller expects, a window or a size larger than the block size, a
// dictionary, a checksum, bytes after the frame, a frame or block cut
// short, or data that does not decode. Test for it with errors.Is.
var ErrCorrupt = errors.New("blockcodec: corrupt compressed block")

// Algorithm names a compression algorithm. Its values are this package's
// own, not bytes of the file format: the caller maps its format's encoding
// byte to an Algorithm.
type Algorithm uint8

const (
	// Zstd stores a block as one zstd frame.
	Zstd Algorithm = iota + 1
	// S2 stores a block as one s2 block.
	S2
)

// String returns the algorithm's name as a user would write it.
func (a Algorithm) String() string {
	switch a {
	case Zstd:
		return "zstd"
	case S2:
		return "s2"
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// Level trades compression speed for size. It matters only when writing:
// every level of an algorithm decodes alike.
type Level uint8

const (
	// LevelDefault is zstd's default level, and s2's only one.
	LevelDefault Level = iota
	// LevelFastest is zstd's fastest level.
	LevelFastest
)

// Block sizes a Codec accepts, the same bounds as a volume's block size.
const (
	MinBlockSize = 4 << 10
	MaxBlockSize = 1 << 20
)

// Codec compresses and decompresses blocks of at most BlockSize bytes with
// one algorithm. It is safe for concurrent use: encoders, decoders and
// scratch buffers are pooled, so in steady state neither Compress nor
// Decompress allocates. The zero value is not usable; call New.
type Codec struct {
	alg       Algorithm
	blockSize int
	zenc      *zstd.Encoder
	zdec      *zstd.Decoder
	// scratch holds the buffers Compress encodes into: the encoder's
	// output can exceed the block, and the caller's dst only has to hold
	// what is worth storing.
	scratch bufPool
	// decodeBufs holds buffers of DecodeRoom bytes, for a Decompress whose
	// dst lacks the room to decode in place.
	decodeBufs bufPool
	// slack is the room a decode needs past the block: for zstd the
	// largest block a frame may hold, which the decoder writes before it
	// can tell that the frame decodes to more than it declared.
	slack int
}

// New returns a Codec for alg and blockSize (a power of two from
// MinBlockSize to MaxBlockSize). level selects zstd's speed; s2 has one
// level, LevelDefault. It keeps at most GOMAXPROCS encoders, decoders and
// scratch buffers, allocated on first use.
func New(alg Algorithm, level Level, blockSize int) (*Codec, error) {
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || bits.OnesCount(uint(blockSize)) != 1 {
		return nil, fmt.Errorf("blockcodec: block size %d is not a power of two from %d to %d", blockSize, MinBlockSize, MaxBlockSize)
	}
	workers := runtime.GOMAXPROCS(0)
	c := &Codec{alg: alg, blockSize: blockSize}
	var maxStored int
	switch alg {
	case Zstd:
		speed := zstd.SpeedDefault
		switch level {
		case LevelDefault:
		case LevelFastest:
			speed = zstd.SpeedFastest
		default:
			return nil, fmt.Errorf("blockcodec: unknown zstd level %d", level)
		}
		var err error
		c.zenc, err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(speed),
			zstd.WithEncoderConcurrency(workers),
			// A window of the block size: the block is the whole input.
			zstd.WithWindowSize(blockSize),
			// The frame always carries its content size, even below 256
			// bytes, so that Decompress can check it before decoding.
			zstd.WithSingleSegment(true),
			// The GCM tag around the stored block already authenticates it.
			zstd.WithEncoderCRC(false),
		)
		if err != nil {
			return nil, fmt.Errorf("blockcodec: zstd encoder: %w", err)
		}
		c.zdec, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(workers),
			zstd.WithDecoderMaxMemory(uint64(blockSize)),
			zstd.WithDecoderMaxWindow(uint64(blockSize)),
			zstd.WithDecodeAllCapLimit(true),
		)
		if err != nil {
			return nil, fmt.Errorf("blockcodec: zstd decoder: %w", err)
		}
		maxStored = c.zenc.MaxEncodedSize(blockSize)
		// A single-segment frame's blocks hold at most its window, the
		// content size, and never more than zstd's block limit; the margin
		// is the decoder's over-write allowance for its wide copies.
		c.slack = min(blockSize, zstdMaxBlockSize) + zstdCopyMargin
	case S2:
		if level != LevelDefault {
			return nil, fmt.Errorf("blockcodec: s2 has no level %d", level)
		}
		maxStored = s2.MaxEncodedLen(blockSize)
	default:
		return nil, fmt.Errorf("blockcodec: unknown algorithm %d", uint8(alg))
	}
	c.scratch = newBufPool(workers, maxStored)
	c.decodeBufs = newBufPool(workers, c.DecodeRoom())
	return c, nil
}

// Algorithm returns the codec's algorithm.
func (c *Codec) Algorithm() Algorithm { return c.alg }

// BlockSize returns the largest block the codec compresses or decompresses.
func (c *Codec) BlockSize() int { return c.blockSize }

// Compress compresses src, a block of at most BlockSize bytes, and reports
// whether the block is worth storing compressed: only if that saves at
// least one 32nd of it, since a smaller saving would not pay for the
// decompression on every read.
//
// If compressed is true, stored is dst with the compressed form appended
// (at most len(src) - len(src)/32 bytes; dst is reallocated only if it
// lacks that capacity). If compressed is false, stored is src itself, not
// a copy, and dst is untouched: the caller stores src as is and records
// that it did. src is never modified. Compress panics if src is longer
// than BlockSize, which is a caller's bug.
func (c *Codec) Compress(dst, src []byte) (stored []byte, compressed bool) {
	if len(src) > c.blockSize {
		panic(fmt.Sprintf("blockcodec: block of %d bytes exceeds the block size %d", len(src), c.blockSize))
	}
	if len(src) == 0 {
		return src, false
	}
	buf := c.scratch.get()
	var enc []byte
	switch c.alg {
	case Zstd:
		enc = c.zenc.EncodeAll(src, buf[:0])
	case S2:
		enc = s2.Encode(buf[:cap(buf)], src)
	}
	compressed = len(enc) < len(src) && len(src)-len(enc) >= len(src)/32
	if compressed {
		stored = append(dst, enc...)
	} else {
		stored = src
	}
	c.scratch.put(enc)
	return stored, compressed
}

// Decompress checks that stored is exactly one compressed block that
// declares plainLen bytes, plainLen at most BlockSize, and appends the
// plainLen decompressed bytes to dst. It checks the declared size before it
// decodes anything, and the decoder never writes past a buffer of
// DecodeRoom bytes, so a block that claims or decodes to more is refused
// without allocating. If dst's spare capacity is at least DecodeRoom (less
// BlockSize - plainLen for a shorter block), the block is decoded in
// place; otherwise it is decoded into a pooled buffer and copied, and dst
// is reallocated only if it lacks room for plainLen more bytes.
//
// Any failure wraps ErrCorrupt; the returned slice is then nil, and the
// spare capacity of dst may have been overwritten.
func (c *Codec) Decompress(dst, stored []byte, plainLen int) ([]byte, error) {
	if plainLen < 0 || plainLen > c.blockSize {
		return nil, fmt.Errorf("%w: %d bytes expected, the block size is %d", ErrCorrupt, plainLen, c.blockSize)
	}
	n := len(dst)
	room := plainLen + c.slack
	if c.slack == 0 {
		dst = slices.Grow(dst, plainLen)
	}
	if cap(dst)-n >= room {
		// The three-index slice is the decoder's limit.
		if err := c.decode(dst[n:n:n+room], stored, plainLen); err != nil {
			return nil, err
		}
		return dst[:n+plainLen], nil
	}
	buf := c.decodeBufs.get()
	defer c.decodeBufs.put(buf)
	if err := c.decode(buf[:0:room], stored, plainLen); err != nil {
		return nil, err
	}
	return append(dst, buf[:plainLen]...), nil
}

// DecodeRoom returns the spare capacity a dst needs for Decompress to
// decode a block of BlockSize bytes in place, without a copy: the block
// plus the most one zstd block can overshoot before the decoder sees that
// the frame lied about its size.
func (c *Codec) DecodeRoom() int { return c.blockSize + c.slack }

// decode decodes stored into out, which has length 0 and capacity
// plainLen + c.slack, and checks that it decoded to out's own memory.
func (c *Codec) decode(out, stored []byte, plainLen int) error {
	base := out[:cap(out)]
	var err error
	switch c.alg {
	case Zstd:
		out, err = c.decodeZstd(out, stored, plainLen)
	case S2:
		out, err = decodeS2(out, stored, plainLen)
	default:
		err = fmt.Errorf("%w: unknown algorithm %d", ErrCorrupt, uint8(c.alg))
	}
	if err != nil {
		return err
	}
	// The decoders write in place; a result elsewhere would mean one
	// allocated, which the capacity limit rules out, so it is refused.
	if len(out) != plainLen || (plainLen > 0 && &out[0] != &base[0]) {
		return fmt.Errorf("%w: %s block decoded to %d bytes, expected %d", ErrCorrupt, c.alg, len(out), plainLen)
	}
	return nil
}

// decodeS2 decodes the s2 block stored into out (capacity plainLen).
func decodeS2(out, stored []byte, plainLen int) ([]byte, error) {
	declared, err := s2.DecodedLen(stored)
	if err != nil {
		return nil, fmt.Errorf("%w: s2 block length: %v", ErrCorrupt, err)
	}
	if declared != plainLen {
		return nil, fmt.Errorf("%w: s2 block declares %d bytes, expected %d", ErrCorrupt, declared, plainLen)
	}
	// s2.Decode fills exactly declared bytes of out's capacity and fails
	// on anything that would write past them or leave bytes after.
	out, err = s2.Decode(out, stored)
	if err != nil {
		return nil, fmt.Errorf("%w: s2 block: %v", ErrCorrupt, err)
	}
	return out, nil
}

// bufPool keeps up to cap(ch) buffers of size bytes. It is a channel
// rather than a sync.Pool so that a garbage collection does not empty it.
type bufPool struct {
	ch   chan []byte
	size int
}

func newBufPool(n, size int) bufPool { return bufPool{ch: make(chan []byte, n), size: size} }

// get returns a pooled buffer of length 0 and capacity size, or a new one
// when every pooled buffer is in use.
func (p bufPool) get() []byte {
	select {
	case b := <-p.ch:
		return b[:0]
	default:
		return make([]byte, 0, p.size)
	}
}

// put returns a buffer to the pool, or drops it when the pool is full: the
// pool keeps what steady concurrent use needs, and a burst's extra buffers
// go to the garbage collector.
func (p bufPool) put(b []byte) {
	select {
	case p.ch <- b[:0]:
	default:
	}
}

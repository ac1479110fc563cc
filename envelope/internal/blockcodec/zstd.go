package blockcodec

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Sizes from the zstd format (RFC 8878).
const (
	zstdBlockHeaderSize = 3
	// zstdMaxBlockSize bounds every block's content, whatever the window.
	zstdMaxBlockSize = 128 << 10
	// zstdCopyMargin covers the bytes the decoder's wide copies may write
	// past a block's end (the library's own over-allocation is 32).
	zstdCopyMargin = 64
	zstdBlockRaw   = 0
	zstdBlockRLE   = 1
	zstdBlockComp  = 2
)

// decodeZstd checks that stored is one zstd frame as Compress writes it for
// plainLen bytes, then decodes it into out (capacity plainLen).
func (c *Codec) decodeZstd(out, stored []byte, plainLen int) ([]byte, error) {
	if err := c.checkZstdFrame(stored, plainLen); err != nil {
		return nil, err
	}
	out, err := c.zdec.DecodeAll(stored, out)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd frame: %v", ErrCorrupt, err)
	}
	return out, nil
}

// checkZstdFrame reads the frame header and walks the block headers without
// decoding anything. It refuses a frame whose declared content size is not
// plainLen or is missing, whose window exceeds the block size, that is not
// single-segment (its window then being its content size), that needs a
// dictionary or carries a checksum, and anything but exactly one frame:
// DecodeAll would otherwise decode further frames, or skip skippable ones,
// after the first.
func (c *Codec) checkZstdFrame(stored []byte, plainLen int) error {
	var h zstd.Header
	rest, err := h.DecodeAndStrip(stored)
	switch {
	case err != nil:
		return fmt.Errorf("%w: zstd frame header: %v", ErrCorrupt, err)
	case h.Skippable:
		return fmt.Errorf("%w: skippable zstd frame", ErrCorrupt)
	case !h.HasFCS:
		return fmt.Errorf("%w: zstd frame without a content size", ErrCorrupt)
	case h.FrameContentSize != uint64(plainLen):
		return fmt.Errorf("%w: zstd frame declares %d bytes, expected %d", ErrCorrupt, h.FrameContentSize, plainLen)
	case !h.SingleSegment && h.WindowSize > uint64(c.blockSize):
		return fmt.Errorf("%w: zstd window of %d bytes exceeds the block size %d", ErrCorrupt, h.WindowSize, c.blockSize)
	case !h.SingleSegment:
		// Only a single-segment frame decodes straight into the caller's
		// buffer; any other makes the decoder allocate a history of its
		// window plus a block.
		return fmt.Errorf("%w: zstd frame is not single-segment", ErrCorrupt)
	case h.DictionaryID != 0:
		return fmt.Errorf("%w: zstd frame needs dictionary %d", ErrCorrupt, h.DictionaryID)
	case h.HasCheckSum:
		return fmt.Errorf("%w: zstd frame carries a checksum", ErrCorrupt)
	}
	// Raw and RLE blocks state their decoded size; a sum above plainLen is
	// refused here, before the decoder runs.
	literal := 0
	for {
		if len(rest) < zstdBlockHeaderSize {
			return fmt.Errorf("%w: zstd frame cut short", ErrCorrupt)
		}
		bh := uint32(rest[0]) | uint32(rest[1])<<8 | uint32(rest[2])<<16
		rest = rest[zstdBlockHeaderSize:]
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		if size > zstdMaxBlockSize {
			return fmt.Errorf("%w: zstd block of %d bytes", ErrCorrupt, size)
		}
		body := size
		switch typ {
		case zstdBlockRaw:
			literal += size
		case zstdBlockRLE:
			literal += size
			body = 1
		case zstdBlockComp:
		default:
			return fmt.Errorf("%w: reserved zstd block type", ErrCorrupt)
		}
		if literal > plainLen {
			return fmt.Errorf("%w: zstd blocks exceed the declared %d bytes", ErrCorrupt, plainLen)
		}
		if len(rest) < body {
			return fmt.Errorf("%w: zstd frame cut short", ErrCorrupt)
		}
		rest = rest[body:]
		if last {
			break
		}
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d bytes after the zstd frame", ErrCorrupt, len(rest))
	}
	return nil
}

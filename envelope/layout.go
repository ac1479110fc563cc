package envelope

import "fmt"

// Format constants, each derived from the ones before it.
const (
	// Version is the file format version this package writes; it reads
	// versions 1 and 2.
	Version = 2
	// MinVersion is the oldest format version this package reads (and
	// writes, for existing files).
	MinVersion = 1

	fileIDSize   = 16 // random file ID
	volumeIDSize = 16 // random volume ID, from kmsfs.conf
	nonceSize    = 16 // 128-bit random GCM nonce per block write
	tagSize      = 16 // GCM tag
	// BlockOverhead is what sealing adds to a block: nonce and tag.
	BlockOverhead = nonceSize + tagSize

	// MinBlockSize and MaxBlockSize bound the plaintext block size B.
	MinBlockSize = 4 << 10
	MaxBlockSize = 1 << 20
	// DefaultBlockSize is B when a volume does not choose one.
	DefaultBlockSize = MinBlockSize

	// MinSlotSize and MaxSlotSize bound one header slot; a header is two.
	MinSlotSize = 512
	MaxSlotSize = 32 << 10
	// DefaultSlotSize fits an AWS KMS stanza plus an RSA-3072 escrow stanza.
	DefaultSlotSize = 1024
	slotAlign       = 512
)

// Layout fixes where every byte of a cipher file sits: the block size B and
// the header slot size. Both are per volume (kmsfs.conf), so a file's
// plaintext size follows from its ciphertext size without reading it.
// A Layout is a small value, safe to copy and to share.
type Layout struct {
	blockSize int
	slotSize  int
}

// NewLayout checks blockSize (a power of two from 4 KiB to 1 MiB) and
// slotSize (a multiple of 512 from 512 to 32 KiB) and returns their Layout.
func NewLayout(blockSize, slotSize int) (Layout, error) {
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || blockSize&(blockSize-1) != 0 {
		return Layout{}, fmt.Errorf("envelope: block size %d: %w (want a power of two from %d to %d)",
			blockSize, ErrFormat, MinBlockSize, MaxBlockSize)
	}
	if slotSize < MinSlotSize || slotSize > MaxSlotSize || slotSize%slotAlign != 0 {
		return Layout{}, fmt.Errorf("envelope: header slot size %d: %w (want a multiple of %d from %d to %d)",
			slotSize, ErrFormat, slotAlign, MinSlotSize, MaxSlotSize)
	}
	return Layout{blockSize: blockSize, slotSize: slotSize}, nil
}

// DefaultLayout is the Layout of a volume that sets nothing.
func DefaultLayout() Layout { return Layout{blockSize: DefaultBlockSize, slotSize: DefaultSlotSize} }

// BlockSize returns B, the plaintext bytes per block.
func (l Layout) BlockSize() int { return l.blockSize }

// SlotSize returns the size of one header slot.
func (l Layout) SlotSize() int { return l.slotSize }

// HeaderSize returns the bytes before block 0: two header slots.
func (l Layout) HeaderSize() int64 { return 2 * int64(l.slotSize) }

// SealedBlockSize returns the stored size of a full block: B + BlockOverhead.
func (l Layout) SealedBlockSize() int64 { return int64(l.blockSize) + BlockOverhead }

// BlockOffset returns the cipher file offset of block i.
func (l Layout) BlockOffset(i int64) int64 { return l.HeaderSize() + i*l.SealedBlockSize() }

// PlainSize returns the plaintext size of a cipher file of cipherSize bytes.
// It needs no key. A file without a complete header is empty; a trailing
// fragment too short to hold a sealed byte adds nothing (reading it fails).
func (l Layout) PlainSize(cipherSize int64) int64 {
	c := cipherSize - l.HeaderSize()
	if c <= 0 {
		return 0
	}
	n, r := c/l.SealedBlockSize(), c%l.SealedBlockSize()
	plain := n * int64(l.blockSize)
	if r > BlockOverhead {
		plain += r - BlockOverhead
	}
	return plain
}

// CipherSize returns the size of the cipher file holding plainSize bytes,
// header included. It is the inverse of PlainSize.
func (l Layout) CipherSize(plainSize int64) int64 {
	if plainSize <= 0 {
		return l.HeaderSize()
	}
	b := int64(l.blockSize)
	n, r := plainSize/b, plainSize%b
	c := l.HeaderSize() + n*l.SealedBlockSize()
	if r > 0 {
		c += r + BlockOverhead
	}
	return c
}

// lastBlock returns the index of the last block of a file of plainSize
// bytes, or -1 for an empty file.
func (l Layout) lastBlock(plainSize int64) int64 {
	if plainSize <= 0 {
		return -1
	}
	return (plainSize - 1) / int64(l.blockSize)
}

// blockLen returns the plaintext length of block i in a file of plainSize bytes.
func (l Layout) blockLen(i, plainSize int64) int {
	b := int64(l.blockSize)
	n := plainSize - i*b
	if n > b {
		n = b
	}
	if n < 0 {
		n = 0
	}
	return int(n)
}

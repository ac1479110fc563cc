package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/stanza"
)

// Header slot layout (all integers big-endian); see docs/FORMAT.md.
//
//	version 1                         version 2
//	 0  4  magic "KMFS"                0  4  magic "KMFS"
//	 4  2  format version (1)          4  2  format version (2)
//	 6  2  flags, zero                 6  2  flags, zero
//	 8  4  block size B                8  4  block size B
//	12  4  slot size S                12  4  slot size S
//	16 16  volume ID                  16 16  volume ID
//	32 16  file ID                    32 16  file ID
//	48  8  sequence number            48  8  sequence number
//	56  1  stanza count n             56  1  content encoding, 0 (raw)
//	57  …  n stanzas                  57  1  stanza count n
//	                                  58  2  sparse range count h
//	                                  60  …  n stanzas, then h ranges
//	 …  …  zero padding                …  …  zero padding
//	S-32 32 HMAC-SHA256(header key, bytes 0 .. S-32)
//
// A stanza is u8 len, type; u16 len, key ID; u16 len, body. A sparse
// range is two unsigned varints: its gap from the previous range's end
// (from block 0 for the first), then its length in blocks.
const (
	magic           = "KMFS"
	slotFixedSizeV1 = 57
	slotFixedSizeV2 = 60
	macSize         = sha256.Size
	maxStanzas      = 16
	maxTypeLen      = 32
	maxKeyIDLen     = 2048
	maxBodyLen      = 8192

	// encodingRaw is the only content encoding of version 2: blocks hold
	// the plaintext as it is. Other values are reserved (compression).
	encodingRaw = 0

	labelContentKeyV1 = "kmsfs v1 content key"
	labelHeaderKeyV1  = "kmsfs v1 header key"
	labelContentKeyV2 = "kmsfs v2 content key"
	labelHeaderKeyV2  = "kmsfs v2 header key"
)

// FileID is a file's random 128-bit identity. It salts the content key and
// sits in every block's additional data.
type FileID [fileIDSize]byte

// VolumeID is the random 128-bit identity of a volume, from kmsfs.conf.
type VolumeID [volumeIDSize]byte

// Header is the decoded content of one header slot. Stanzas are the data
// key's wrapped copies; any one of them opens the file.
type Header struct {
	// Version is the slot's format version, 1 or 2.
	Version int
	Volume  VolumeID
	File    FileID
	Seq     uint64
	Stanzas []stanza.Stanza
	// Sparse lists, in version 2, the block ranges that the file vouches
	// may be stored as zeros (holes). Version 1 has no list: there every
	// all-zero block but the last reads as zeros.
	Sparse []BlockRange
}

// deriveKeys returns the content key and the header key of a file of
// format version, each in a cell of mem (the heap if mem is nil): the
// caller frees both with mem.Free.
func deriveKeys(mem *secmem.Arena, dataKey []byte, id FileID, version int) (content, header []byte, err error) {
	if len(dataKey) != stanza.DataKeySize {
		return nil, nil, fmt.Errorf("envelope: data key is %d bytes, want %d: %w",
			len(dataKey), stanza.DataKeySize, stanza.ErrInvalid)
	}
	ec, eh := expandContentKeyV2, expandHeaderKeyV2
	if version == 1 {
		ec, eh = expandContentKeyV1, expandHeaderKeyV1
	}
	// HKDF-SHA256 (RFC 5869) with one Extract for both keys; each 32-byte
	// key is the first Expand block, T(1) = HMAC(PRK, info ‖ 0x01).
	// Byte for byte what hkdf.Key gives (TestVectorsDecrypt), in a third
	// of the time: it runs for every file opened or created.
	var prk [sha256.Size]byte
	hmacSHA256(prk[:0], id[:], dataKey)
	content = hmacSHA256(mem.Alloc(sha256.Size)[:0], prk[:], ec)
	header = hmacSHA256(mem.Alloc(sha256.Size)[:0], prk[:], eh)
	clear(prk[:])
	return content, header, nil
}

// The HKDF-Expand inputs of the first block: info ‖ 0x01.
var (
	expandContentKeyV1 = []byte(labelContentKeyV1 + "\x01")
	expandHeaderKeyV1  = []byte(labelHeaderKeyV1 + "\x01")
	expandContentKeyV2 = []byte(labelContentKeyV2 + "\x01")
	expandHeaderKeyV2  = []byte(labelHeaderKeyV2 + "\x01")
)

func fixedSize(version int) int {
	if version == 1 {
		return slotFixedSizeV1
	}
	return slotFixedSizeV2
}

// encodedLen returns the bytes the slot needs before padding and MAC.
func (h *Header) encodedLen() int {
	n := fixedSize(h.Version) + stanzasLen(h.Stanzas)
	if h.Version != 1 {
		n += sparseList(h.Sparse).encodedLen()
	}
	return n
}

func stanzasLen(stanzas []stanza.Stanza) int {
	n := 0
	for _, s := range stanzas {
		n += 1 + len(s.Type) + 2 + len(s.KeyID) + 2 + len(s.Body)
	}
	return n
}

// FitsIn reports whether h encodes into one slot of layout l.
func (h *Header) FitsIn(l Layout) bool { return h.encodedLen()+macSize <= l.slotSize }

func checkStanza(s stanza.Stanza) error {
	if len(s.Type) == 0 || len(s.Type) > maxTypeLen {
		return fmt.Errorf("stanza type length %d", len(s.Type))
	}
	for i := 0; i < len(s.Type); i++ {
		c := s.Type[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("stanza type has byte %#x", c)
		}
	}
	if len(s.KeyID) == 0 || len(s.KeyID) > maxKeyIDLen {
		return fmt.Errorf("stanza key ID length %d", len(s.KeyID))
	}
	for i := 0; i < len(s.KeyID); i++ {
		if c := s.KeyID[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("stanza key ID has byte %#x", c)
		}
	}
	if len(s.Body) == 0 || len(s.Body) > maxBodyLen {
		return fmt.Errorf("stanza body length %d", len(s.Body))
	}
	return nil
}

// marshalSlot encodes h into one slot of layout l, authenticated with headerKey.
func (h *Header) marshalSlot(l Layout, headerKey []byte) ([]byte, error) {
	if h.Version != 1 && h.Version != 2 {
		return nil, fmt.Errorf("envelope: header version %d, want 1 or 2", h.Version)
	}
	if len(h.Stanzas) == 0 || len(h.Stanzas) > maxStanzas {
		return nil, fmt.Errorf("envelope: header has %d stanzas, want 1 to %d", len(h.Stanzas), maxStanzas)
	}
	for _, s := range h.Stanzas {
		if err := checkStanza(s); err != nil {
			return nil, fmt.Errorf("envelope: stanza %v: %s", s, err)
		}
	}
	if h.Version == 1 && len(h.Sparse) > 0 {
		return nil, errors.New("envelope: a version 1 header has no sparse ranges")
	}
	if len(h.Sparse) > 0xffff {
		return nil, fmt.Errorf("envelope: %d sparse ranges, at most %d", len(h.Sparse), 0xffff)
	}
	if !h.FitsIn(l) {
		return nil, fmt.Errorf("envelope: stanzas need %d bytes, header slot holds %d (choose a larger slot size)",
			h.encodedLen()+macSize, l.slotSize)
	}
	b := make([]byte, fixedSize(h.Version), l.slotSize)
	copy(b, magic)
	binary.BigEndian.PutUint16(b[4:], uint16(h.Version))
	binary.BigEndian.PutUint32(b[8:], uint32(l.blockSize))
	binary.BigEndian.PutUint32(b[12:], uint32(l.slotSize))
	copy(b[16:], h.Volume[:])
	copy(b[32:], h.File[:])
	binary.BigEndian.PutUint64(b[48:], h.Seq)
	if h.Version == 1 {
		b[56] = byte(len(h.Stanzas))
	} else {
		b[56] = encodingRaw
		b[57] = byte(len(h.Stanzas))
		binary.BigEndian.PutUint16(b[58:], uint16(len(h.Sparse)))
	}
	for _, s := range h.Stanzas {
		b = append(b, byte(len(s.Type)))
		b = append(b, s.Type...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.KeyID)))
		b = append(b, s.KeyID...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Body)))
		b = append(b, s.Body...)
	}
	b = sparseList(h.Sparse).appendTo(b)
	b = b[:l.slotSize-macSize]
	return hmacSHA256(b, headerKey, b), nil
}

// LayoutPrefixSize is how many bytes of a header slot name its layout
// (DeclaredLayout).
const LayoutPrefixSize = 16

// DeclaredLayout returns the layout that a header slot beginning with
// prefix (at least LayoutPrefixSize bytes) declares: for reading a cipher
// file without its volume's configuration. Nothing is authenticated: the
// MAC needs the data key. A prefix without the magic, or a layout
// NewLayout refuses, is ErrFormat.
func DeclaredLayout(prefix []byte) (Layout, error) {
	if len(prefix) < LayoutPrefixSize || string(prefix[:4]) != magic {
		return Layout{}, fmt.Errorf("header magic: %w", ErrFormat)
	}
	l, err := NewLayout(int(binary.BigEndian.Uint32(prefix[8:])), int(binary.BigEndian.Uint32(prefix[12:])))
	if err != nil {
		return Layout{}, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	return l, nil
}

// ParseHeaderSlot decodes one header slot of layout l. It checks structure
// only: the MAC needs the data key and is checked when the file is opened.
// The returned Header does not alias slot.
func ParseHeaderSlot(l Layout, slot []byte) (*Header, error) {
	if len(slot) != l.slotSize {
		return nil, fmt.Errorf("header slot is %d bytes, want %d: %w", len(slot), l.slotSize, ErrFormat)
	}
	if string(slot[:4]) != magic {
		return nil, fmt.Errorf("header magic: %w", ErrFormat)
	}
	v := int(binary.BigEndian.Uint16(slot[4:]))
	if v != 1 && v != 2 {
		return nil, fmt.Errorf("header format version %d, this kmsfs reads 1 and 2: %w", v, ErrFormat)
	}
	if f := binary.BigEndian.Uint16(slot[6:]); f != 0 {
		return nil, fmt.Errorf("header flags %#x unknown: %w", f, ErrFormat)
	}
	if bs := binary.BigEndian.Uint32(slot[8:]); bs != uint32(l.blockSize) {
		return nil, fmt.Errorf("header block size %d, volume uses %d: %w", bs, l.blockSize, ErrFormat)
	}
	if ss := binary.BigEndian.Uint32(slot[12:]); ss != uint32(l.slotSize) {
		return nil, fmt.Errorf("header slot size %d, volume uses %d: %w", ss, l.slotSize, ErrFormat)
	}
	h := &Header{Version: v, Seq: binary.BigEndian.Uint64(slot[48:])}
	copy(h.Volume[:], slot[16:])
	copy(h.File[:], slot[32:])
	n, nSparse := int(slot[56]), 0
	if v == 2 {
		if e := slot[56]; e != encodingRaw {
			return nil, fmt.Errorf("header content encoding %d unknown: %w", e, ErrFormat)
		}
		n, nSparse = int(slot[57]), int(binary.BigEndian.Uint16(slot[58:]))
	}
	if n == 0 || n > maxStanzas {
		return nil, fmt.Errorf("header stanza count %d: %w", n, ErrFormat)
	}
	rest := slot[fixedSize(v) : l.slotSize-macSize]
	field := func(lenBytes int) ([]byte, bool) {
		if len(rest) < lenBytes {
			return nil, false
		}
		var m int
		if lenBytes == 1 {
			m = int(rest[0])
		} else {
			m = int(binary.BigEndian.Uint16(rest))
		}
		rest = rest[lenBytes:]
		if len(rest) < m {
			return nil, false
		}
		f := rest[:m]
		rest = rest[m:]
		return f, true
	}
	h.Stanzas = make([]stanza.Stanza, 0, n)
	for i := 0; i < n; i++ {
		t, ok1 := field(1)
		id, ok2 := field(2)
		body, ok3 := field(2)
		if !ok1 || !ok2 || !ok3 {
			return nil, fmt.Errorf("header stanza %d overruns the slot: %w", i, ErrFormat)
		}
		s := stanza.Stanza{Type: string(t), KeyID: string(id), Body: bytes.Clone(body)}
		if err := checkStanza(s); err != nil {
			return nil, fmt.Errorf("header stanza %d: %s: %w", i, err, ErrFormat)
		}
		h.Stanzas = append(h.Stanzas, s)
	}
	if nSparse > 0 {
		sp, r, err := parseSparse(rest, nSparse)
		if err != nil {
			return nil, fmt.Errorf("header: %s: %w", err, ErrFormat)
		}
		h.Sparse, rest = sp, r
	}
	for _, c := range rest {
		if c != 0 {
			return nil, fmt.Errorf("header padding not zero: %w", ErrFormat)
		}
	}
	return h, nil
}

// verifySlot reports whether slot's MAC is valid under headerKey.
func verifySlot(slot, headerKey []byte) bool {
	var sum [macSize]byte
	return hmac.Equal(hmacSHA256(sum[:0], headerKey, slot[:len(slot)-macSize]), slot[len(slot)-macSize:])
}

// sparseRoom is the room a new volume's slot size keeps for sparse
// ranges: 512 bytes hold at least 25 ranges at any offset and about a
// hundred in files under a few GiB.
const sparseRoom = 512

// SlotSizeFor returns the slot size a volume should use for headers with
// stanzas like these: room for twice their size (so a rotation to keys of
// similar size fits) and for sparse ranges, rounded up to a multiple of
// 512, and at least DefaultSlotSize. It returns an error if they cannot
// fit any slot.
func SlotSizeFor(stanzas []stanza.Stanza) (int, error) {
	sl := stanzasLen(stanzas)
	need := 2*sl + slotFixedSizeV2 + sparseRoom + macSize
	size := max(DefaultSlotSize, (need+slotAlign-1)/slotAlign*slotAlign)
	if size > MaxSlotSize {
		if min := (sl + slotFixedSizeV2 + macSize + slotAlign - 1) / slotAlign * slotAlign; min <= MaxSlotSize {
			return min, nil
		}
		return 0, fmt.Errorf("envelope: stanzas need %d bytes, more than a header slot can hold (%d)", sl+slotFixedSizeV2+macSize, MaxSlotSize)
	}
	return size, nil
}

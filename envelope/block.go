package envelope

import (
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// Block additional data: file ID, block index (u64 big-endian), last flag.
const aadSize = fileIDSize + 8 + 1

// Codec seals and opens the content blocks of one file: AES-256-GCM with a
// fresh 128-bit random nonce per block write, under the file's content key,
// with additional data that binds file ID, block index and last flag.
//
// A sealed block is nonce ‖ ciphertext ‖ tag. Codec is safe for concurrent
// use; it draws nonces from its Volume's random source and processes large
// requests in parallel as the Volume's options say.
type Codec struct {
	v     *Volume
	aead  cipher.AEAD
	state []byte // the AEAD's key schedule, in a cell of v.mem; nil if on the heap
	id    FileID
	zeros zeroRule // which all-zero blocks read as holes; nil: none
	// remnants notes the crash remnants reads accepted (remnants.go).
	remnants remnantLog
}

// zeroRule says whether an all-zero stored block i, not the file's last,
// is a hole and reads as zeros. Its answer must not change while a Codec
// call that consults it runs.
type zeroRule interface {
	zeroOK(i int64) bool
}

// anyZeros is the version 1 rule: every all-zero block but the last is a
// hole.
type anyZeros struct{}

func (anyZeros) zeroOK(int64) bool { return true }

// NewCodec returns the Codec of a version 2 file with ID id whose data key
// is dataKey. It derives the content key and keeps no reference to
// dataKey. Alone, a Codec vouches for no holes: an all-zero block fails to
// open (a File knows its holes).
func (v *Volume) NewCodec(dataKey []byte, id FileID) (*Codec, error) {
	content, header, err := deriveKeys(nil, dataKey, id, Version)
	if err != nil {
		return nil, err
	}
	clear(header)
	aead, _, err := newAEAD(content, nil)
	clear(content)
	if err != nil {
		return nil, err
	}
	return &Codec{v: v, aead: aead, id: id}, nil
}

// newCodec returns the codec of file id under contentKey, a cell of v.mem
// that it frees; its key schedule lives in v.mem where the implementation
// allows (wipe frees it).
func (v *Volume) newCodec(contentKey []byte, id FileID, zeros zeroRule) (*Codec, error) {
	aead, state, err := newAEAD(contentKey, v.mem)
	v.mem.Free(contentKey)
	if err != nil {
		return nil, err
	}
	return &Codec{v: v, aead: aead, state: state, id: id, zeros: zeros}, nil
}

// wipe zeroes and frees the codec's key schedule where it holds it; the
// codec must not be used again.
func (c *Codec) wipe() {
	if c.state != nil {
		c.v.mem.Free(c.state)
		c.state, c.aead = nil, nil
	}
}

// SealedLen returns the stored size of n plaintext bytes that start on a
// block boundary.
func (l Layout) SealedLen(n int) int {
	full, r := n/l.blockSize, n%l.blockSize
	s := full * (l.blockSize + BlockOverhead)
	if r > 0 {
		s += r + BlockOverhead
	}
	return s
}

func (c *Codec) setAAD(aad *[aadSize]byte, i int64, last bool) {
	copy(aad[:], c.id[:])
	binary.BigEndian.PutUint64(aad[fileIDSize:], uint64(i))
	aad[aadSize-1] = 0
	if last {
		aad[aadSize-1] = 1
	}
}

// sealOne seals plain as block i into dst, whose first nonceSize bytes
// already hold the nonce and whose length is len(plain)+BlockOverhead.
func (c *Codec) sealOne(dst, plain []byte, i int64, last bool, aad *[aadSize]byte) {
	c.setAAD(aad, i, last)
	c.aead.Seal(dst[nonceSize:nonceSize], dst[:nonceSize], plain, aad[:])
}

// openOne opens sealed block i into dst (len(sealed)-BlockOverhead bytes).
// A block that fails as its position's flag says but opens marked last is a
// crash remnant and is accepted; an all-zero block that is not the file's
// last and that the codec's zero rule vouches for is a hole and reads as
// zeros.
func (c *Codec) openOne(dst, sealed []byte, i int64, last bool, aad *[aadSize]byte) error {
	if len(sealed) <= BlockOverhead {
		return &BlockError{Block: i, Err: ErrAuth}
	}
	nonce, ct := sealed[:nonceSize], sealed[nonceSize:]
	c.setAAD(aad, i, last)
	if _, err := c.aead.Open(dst[:0], nonce, ct, aad[:]); err == nil {
		return nil
	}
	if !last {
		aad[aadSize-1] = 1
		if _, err := c.aead.Open(dst[:0], nonce, ct, aad[:]); err == nil {
			c.remnants.note(i)
			return nil
		}
		if c.zeros != nil && c.zeros.zeroOK(i) && allZero(sealed) {
			clear(dst[:len(ct)-tagSize])
			return nil
		}
	}
	return &BlockError{Block: i, Err: ErrAuth}
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Seal seals the plaintext p, which starts at block first, into dst.
// fileLast is the index of the file's last block once the write is done;
// only that block may be partial. len(dst) must be SealedLen(len(p)).
// Nonces are read from the Volume's random source in one call, in block
// order, so the output does not depend on how the work is split.
func (c *Codec) Seal(dst, p []byte, first, fileLast int64) error {
	j, n, err := c.sealJob(dst, p, first, fileLast)
	if err != nil {
		return err
	}
	_, err = c.v.run(j, n, len(p))
	return err
}

// sealPiped is Seal as a pipeline (Volume.pipeline): the blocks are
// sealed while the caller drains them. A nil pipe means the blocks are
// already sealed (too few for a pipeline).
func (c *Codec) sealPiped(dst, p []byte, first, fileLast int64) (*sealPipe, error) {
	j, n, err := c.sealJob(dst, p, first, fileLast)
	if err != nil {
		return nil, err
	}
	if sp, err := c.v.pipeline(j, n); sp != nil || err != nil {
		return sp, err
	}
	_, err = c.v.run(j, n, len(p))
	return nil, err
}

// sealJob checks dst's length and returns the job that seals p's n blocks.
// Its nonces are not in place yet: run and the pipeline put them there
// (putNonces) before the blocks are sealed.
func (c *Codec) sealJob(dst, p []byte, first, fileLast int64) (job, int, error) {
	l := c.v.layout
	if len(dst) != l.SealedLen(len(p)) {
		return job{}, 0, fmt.Errorf("envelope: seal into %d bytes, want %d", len(dst), l.SealedLen(len(p)))
	}
	n := (len(p) + l.blockSize - 1) / l.blockSize
	return job{c: c, dst: dst, src: p, first: first, fileLast: fileLast, seal: true}, n, nil
}

// putNonces reads the nonces of the job's n blocks from the volume's
// random source in one call, in block order, and puts each in front of its
// block.
func (j *job) putNonces(n int) error {
	ss := j.c.v.layout.blockSize + BlockOverhead
	dst := j.dst
	// Read all nonces into the front of the range, then move each into
	// place, highest first so no nonce is overwritten before it moves.
	if _, err := readFull(j.c.v.rand, dst[:n*nonceSize]); err != nil {
		return fmt.Errorf("envelope: nonce: %w", err)
	}
	for i := n - 1; i > 0; i-- {
		copy(dst[i*ss:i*ss+nonceSize], dst[i*nonceSize:(i+1)*nonceSize])
	}
	return nil
}

// Open opens the sealed blocks in sealed, which start at block first, into
// dst; fileLast is the index of the file's last block. len(dst) must be the
// plaintext length of the blocks. It returns how many leading bytes of dst
// are valid: all of them, or up to the first block that failed, with an
// error wrapping ErrAuth that names that block.
func (c *Codec) Open(dst, sealed []byte, first, fileLast int64) (int, error) {
	l := c.v.layout
	if len(sealed) != l.SealedLen(len(dst)) {
		return 0, fmt.Errorf("envelope: open %d sealed bytes into %d", len(sealed), len(dst))
	}
	bs := l.blockSize
	n := (len(dst) + bs - 1) / bs
	bad, err := c.v.run(job{c: c, dst: dst, src: sealed, first: first, fileLast: fileLast}, n, len(dst))
	if err != nil {
		return bad * bs, err
	}
	return len(dst), nil
}

// job is one request's blocks: sealing src into dst, or opening src into dst.
type job struct {
	c               *Codec
	dst, src        []byte
	first, fileLast int64
	seal            bool
}

// do processes blocks [lo, hi) of the job and returns the index of the
// first block that failed to open (or hi) and its error.
func (j *job) do(lo, hi int, aad *[aadSize]byte) (int, error) {
	bs := j.c.v.layout.blockSize
	ss := bs + BlockOverhead
	for i := lo; i < hi; i++ {
		idx := j.first + int64(i)
		if j.seal {
			pe := min((i+1)*bs, len(j.src))
			j.c.sealOne(j.dst[i*ss:i*ss+pe-i*bs+BlockOverhead], j.src[i*bs:pe], idx, idx == j.fileLast, aad)
			continue
		}
		pe := min((i+1)*bs, len(j.dst))
		se := min((i+1)*ss, len(j.src))
		if err := j.c.openOne(j.dst[i*bs:pe], j.src[i*ss:se], idx, idx == j.fileLast, aad); err != nil {
			return i, err
		}
	}
	return hi, nil
}

package envelope

import (
	"fmt"
	"slices"
	"sync"
)

// A crash remnant is a block sealed marked last that is not the file's
// last block. Two changes leave one when a crash stops them between their
// steps: a truncate that reseals the new last block marked last before it
// cuts the file, and a write past a gap that pads the old last block (still
// marked last) before it writes the new blocks and only then clears the
// old block's mark. The block holds the right plaintext for its position,
// so reads accept it (Codec.openOne); fsck reports it, and
// File.ClearRemnants reseals it marked not last.

// remnantLog notes the crash remnants a codec's reads accepted. Remnants
// are rare, so one mutex costs nothing on the common path, which never
// takes it.
type remnantLog struct {
	mu  sync.Mutex
	set map[int64]struct{}
}

// note records block i as a remnant a read accepted.
func (r *remnantLog) note(i int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.set == nil {
		r.set = make(map[int64]struct{})
	}
	r.set[i] = struct{}{}
}

// drop forgets block i.
func (r *remnantLog) drop(i int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.set, i)
}

// list returns the noted blocks in ascending order.
func (r *remnantLog) list() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]int64, 0, len(r.set))
	for i := range r.set {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// isRemnant reports whether sealed, stored as block i, fails to open
// marked not last and opens marked last. dst receives the plaintext
// (len(sealed)-BlockOverhead bytes).
func (c *Codec) isRemnant(dst, sealed []byte, i int64) bool {
	if len(sealed) <= BlockOverhead {
		return false
	}
	var aad [aadSize]byte
	nonce, ct := sealed[:nonceSize], sealed[nonceSize:]
	c.setAAD(&aad, i, false)
	if _, err := c.aead.Open(dst[:0], nonce, ct, aad[:]); err == nil {
		return false
	}
	c.setAAD(&aad, i, true)
	_, err := c.aead.Open(dst[:0], nonce, ct, aad[:])
	return err == nil
}

// Remnants returns, in ascending order, the indices of the crash remnants
// among the blocks that reads of f have opened so far: blocks sealed
// marked last that are not the file's last, which reads accept. Each noted
// block is checked again against the cipher file as it is now, so one
// that a write has replaced since, or that a truncate has made the last
// block, is left out. To find every remnant, read the whole file first, as
// fsck does: Remnants itself reads only the blocks already noted. It is
// safe for concurrent use; the error is a read of the cipher file's.
func (f *File) Remnants() ([]int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.isClosed() {
		return nil, ErrClosed
	}
	var out []int64
	for _, i := range f.codec.remnants.list() {
		ok, err := f.stillRemnant(i)
		if err != nil {
			return out, err
		}
		if ok {
			out = append(out, i)
		}
	}
	return out, nil
}

// stillRemnant reports whether block i is a crash remnant now, forgetting
// it if not; f.mu is held.
func (f *File) stillRemnant(i int64) (bool, error) {
	l := f.v.layout
	if i >= l.lastBlock(f.size) {
		f.codec.remnants.drop(i)
		return false, nil
	}
	buf := f.v.bufs.get(int(l.SealedBlockSize()))
	defer f.v.bufs.put(buf)
	plain := f.v.bufs.get(l.blockSize)
	defer f.v.bufs.put(plain)
	defer clear(*plain)
	if _, err := f.b.ReadAt(*buf, l.BlockOffset(i)); err != nil {
		return false, fmt.Errorf("envelope: read block %d: %w", i, err)
	}
	if !f.codec.isRemnant(*plain, *buf, i) {
		f.codec.remnants.drop(i)
		return false, nil
	}
	return true, nil
}

// ClearRemnants reseals every crash remnant that Remnants reports marked
// not last, with the same plaintext, in place, and returns how many it
// resealed. Nothing else changes: the plaintext of every block reads the
// same before and after. Each block is written as every block rewrite is
// (File.store): under a journal record where the Volume has a journal, so
// a crash leaves the block old or new, either of which reads the same.
// Like Remnants it knows only the blocks that reads have opened.
func (f *File) ClearRemnants() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return 0, ErrClosed
	}
	n := 0
	for _, i := range f.codec.remnants.list() {
		ok, err := f.stillRemnant(i)
		if err != nil {
			return n, err
		}
		if !ok {
			continue
		}
		f.sparse.changing()
		if err := f.rewriteBlock(i, f.size, f.v.layout.blockSize, false, -1); err != nil {
			return n, fmt.Errorf("envelope: clear crash remnant: %w", err)
		}
		f.codec.remnants.drop(i)
		n++
	}
	return n, nil
}

package envelope

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// WriteAt writes p at plaintext offset off, as io.WriterAt. Blocks that p
// covers in part are read, opened and merged; the rest are sealed straight
// from p. A write past the end leaves a hole that reads as zeros. The
// blocks go to the backing file in one write; see docs/FORMAT.md for the
// order of writes that keeps every crash point readable.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("envelope: negative offset")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return 0, ErrClosed
	}
	f.sparse.changing()
	return f.writeAt(p, off)
}

// writeAt is WriteAt with f.mu held.
func (f *File) writeAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l := f.v.layout
	oldLast := l.lastBlock(f.size)
	if first := off / int64(l.blockSize); f.vouches() && first > oldLast+1 {
		// The blocks between the end and the write become holes: the
		// header vouches for them first (or they are filled with zeros).
		// Space for the write is reserved before, so that a full disk
		// refuses it before anything changes.
		if err := f.reserveGapWrite(oldLast, off, off+int64(len(p))); err != nil {
			return 0, err
		}
		if err := f.addHoles(oldLast+1, first); err != nil {
			return 0, err
		}
		oldLast = l.lastBlock(f.size)
	}
	if f.v.journal == nil || f.inTx || oldLast < 0 || oldLast >= off/int64(l.blockSize)-1 {
		n, err := f.writeSteps(p, off)
		f.keepSparseFit()
		return n, err
	}
	// A write past the end with a gap takes up to three steps; the
	// journal undoes them as one.
	size := f.size
	var n int
	err := f.undoable(l.BlockOffset(oldLast), l.CipherSize(off+int64(len(p))), func() (err error) {
		n, err = f.writeSteps(p, off)
		return err
	})
	if err != nil {
		f.size = size
		return 0, err
	}
	f.keepSparseFit()
	return n, nil
}

// keepSparseFit fills the smallest holes if a write split one so that the
// list no longer fits the header. A failure is left for the next header
// write to report: the write itself is done.
func (f *File) keepSparseFit() {
	if f.vouches() && f.sparse.behind() && !f.sparseFits(f.header.Stanzas) {
		f.fitSparse(f.header.Stanzas)
	}
}

// writeSteps is writeAt without the journal record for a gap.
func (f *File) writeSteps(p []byte, off int64) (int, error) {
	l := f.v.layout
	bs := int64(l.blockSize)
	end := off + int64(len(p))
	b0, b1 := off/bs, (end-1)/bs
	oldLast := l.lastBlock(f.size)
	first := b0
	gap := oldLast >= 0 && oldLast < b0-1
	switch {
	case oldLast >= 0 && oldLast == b0-1:
		// The old last block loses its last mark (and, if partial, is
		// padded with zeros) in the same write as the new blocks.
		first = oldLast
	case gap && f.size%bs != 0:
		// A partial last block before a hole is first padded to a full
		// block, still marked last, so that every stop leaves the file
		// readable. Space for the whole write is reserved first, so a
		// full disk refuses the write before the file changes.
		if err := f.reserveGapWrite(oldLast, off, end); err != nil {
			return 0, err
		}
		if err := f.rewriteBlock(oldLast, f.size, int(bs), true, -1); err != nil {
			return 0, err
		}
		f.size = (oldLast + 1) * bs
	}
	newSize := max(f.size, end)
	newLast := l.lastBlock(newSize)

	ss := l.SealedBlockSize()
	buf := f.v.bufs.get(l.SealedLen(int(min((b1+1)*bs, newSize) - first*bs)))
	defer f.v.bufs.put(buf)
	sealed := *buf

	// merge seals block i from its stored content overlaid with p.
	merge := func(i int64) error {
		bl := l.blockLen(i, newSize)
		sb := f.v.bufs.get(bl)
		defer f.v.bufs.put(sb)
		blk := *sb
		oldLen := l.blockLen(i, f.size)
		if err := f.openBlock(blk[:oldLen], i, f.size); err != nil {
			return err
		}
		clear(blk[oldLen:])
		if lo, hi := max(off, i*bs), min(end, i*bs+int64(bl)); lo < hi {
			copy(blk[lo-i*bs:hi-i*bs], p[lo-off:hi-off])
		}
		so := (i - first) * ss
		return f.codec.Seal(sealed[so:so+int64(bl)+BlockOverhead], blk, i, newLast)
	}
	covered := func(i int64) bool {
		return off <= i*bs && end >= i*bs+int64(l.blockLen(i, newSize))
	}
	mid0, mid1 := first, b1+1
	for mid0 <= b1 && (mid0 < b0 || !covered(mid0)) {
		if err := merge(mid0); err != nil {
			return 0, err
		}
		mid0++
		if mid0 > b0 {
			break
		}
	}
	if b1 >= mid0 && !covered(b1) {
		if err := merge(b1); err != nil {
			return 0, err
		}
		mid1--
	}
	var sp *sealPipe
	if mid1 > mid0 {
		pOff, pEnd := mid0*bs-off, min(mid1*bs, end)-off
		so := (mid0 - first) * ss
		var err error
		sp, err = f.codec.sealPiped(sealed[so:so+int64(l.SealedLen(int(pEnd-pOff)))], p[pOff:pEnd], mid0, newLast)
		if err != nil {
			return 0, err
		}
		if sp != nil {
			// This store writes the blocks as they are sealed.
			defer sp.finish()
			sp.base = so
		}
	}
	if err := f.store(sealed, l.BlockOffset(first), -1, sp); err != nil {
		return 0, fmt.Errorf("envelope: write blocks %d-%d: %w", first, b1, err)
	}
	f.filled(first, b1+1)
	if first > oldLast+1 {
		f.holes.add(l.BlockOffset(oldLast+1), l.BlockOffset(first))
	}
	if gap {
		// The old last block, now followed by a hole, loses its last mark.
		if err := f.rewriteBlock(oldLast, f.size, int(bs), false, -1); err != nil {
			f.size = newSize
			return len(p), err
		}
	}
	f.size = newSize
	return len(p), nil
}

// openBlock reads and opens block i of a file of size plaintext bytes into
// dst, which has the block's plaintext length.
func (f *File) openBlock(dst []byte, i, size int64) error {
	if len(dst) == 0 {
		return nil
	}
	l := f.v.layout
	buf := f.v.bufs.get(len(dst) + BlockOverhead)
	defer f.v.bufs.put(buf)
	m, err := f.b.ReadAt(*buf, l.BlockOffset(i))
	if m < len(*buf) {
		if err != nil && err != io.EOF {
			return fmt.Errorf("envelope: read block %d: %w", i, err)
		}
		return fmt.Errorf("envelope: stored file cut short: %w", &BlockError{Block: i, Err: ErrAuth})
	}
	if _, err := f.codec.Open(dst, *buf, i, l.lastBlock(size)); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	return nil
}

// rewriteBlock reseals block i of a file of size plaintext bytes with
// plaintext length newLen (cut, or padded with zeros) and the given last
// mark, writes it in place and then, if cut >= 0, cuts the cipher file to
// cut bytes.
func (f *File) rewriteBlock(i, size int64, newLen int, last bool, cut int64) error {
	l := f.v.layout
	oldLen := l.blockLen(i, size)
	sb := f.v.bufs.get(max(oldLen, newLen))
	defer f.v.bufs.put(sb)
	blk := *sb
	if err := f.openBlock(blk[:oldLen], i, size); err != nil {
		return err
	}
	clear(blk[oldLen:])
	buf := f.v.bufs.get(newLen + BlockOverhead)
	defer f.v.bufs.put(buf)
	lastIdx := i + 1
	if last {
		lastIdx = i
	}
	if err := f.codec.Seal(*buf, blk[:newLen], i, lastIdx); err != nil {
		return err
	}
	if err := f.store(*buf, l.BlockOffset(i), cut, nil); err != nil {
		return fmt.Errorf("envelope: write block %d: %w", i, err)
	}
	f.filled(i, i+1)
	return nil
}

// store writes sealed at cipher offset at and then, if cut >= 0, cuts the
// cipher file to cut bytes. If sp is set, it is still sealing part of
// sealed, which is then written as it is sealed (apply). With a journal,
// a crash anywhere in between is finished or undone by the next Open (see
// Journal); without one, a crash can leave a block that spans pages torn.
func (f *File) store(sealed []byte, at, cut int64, sp *sealPipe) error {
	j := f.v.journal
	if j == nil {
		// Reserve first, so that a full disk refuses the write before it
		// changes anything.
		if err := f.reserve(at, int64(len(sealed))); err != nil {
			return err
		}
		return f.apply(sealed, at, cut, sp)
	}
	if f.inTx {
		return f.apply(sealed, at, cut, sp)
	}
	before := f.stored
	end := at + int64(len(sealed))
	if cut < 0 && at/pageSize == (end-1)/pageSize {
		// Within one page: the kernel writes it whole or not at all.
		return f.apply(sealed, at, cut, sp)
	}
	if end > before {
		// If it fails, undoable puts the old bytes back.
		return f.undoable(at, end, func() error { return f.apply(sealed, at, cut, sp) })
	}
	// An overwrite: record the new bytes, to be written again. Over holes
	// only (a preallocated or sparse file), record instead that the range
	// is to be punched again, which undoes the write without a copy.
	c := Change{File: f.header.File, At: at, Cut: cut, Min: before, Max: before, Hint: f.hint()}
	if cut >= 0 {
		c.Min = min(cut, before)
	}
	if sp != nil {
		sp.finish() // the record carries the sealed bytes
	}
	body := sealed
	allHole, allData := f.holes.classify(at, end, f.b, f.stored)
	if !allData && !(allHole && cut < 0) {
		// Filling some holes allocates: reserve, so a full disk refuses
		// the write before it changes anything. (Over holes only, a
		// failed write is undone by punching them again.)
		if err := f.reserve(at, int64(len(sealed))); err != nil {
			return err
		}
	}
	if allHole && cut < 0 {
		c.Punch, c.N, body = true, int64(len(sealed)), nil
	}
	return f.journaled(&c, body, c.Punch, func() error { return f.apply(sealed, at, cut, sp) })
}

// journaled runs change under journal record c with body. If change
// fails and undo is set, the record (which then undoes the change) is
// carried out at once.
func (f *File) journaled(c *Change, body []byte, undo bool, change func() error) error {
	e, err := f.v.journal.Begin(*c, body)
	if err != nil {
		return err
	}
	before := f.stored
	f.inTx = true
	err = change()
	f.inTx = false
	if err != nil {
		f.holes.lose()
		if undo && c.Apply(body, f.b) == nil {
			f.stored = before
		}
	}
	if eerr := e.End(); err == nil {
		err = eerr
	}
	return err
}

// write writes sealed at cipher offset at and notes what it filled.
func (f *File) write(sealed []byte, at int64) error {
	if _, err := f.b.WriteAt(sealed, at); err != nil {
		return err
	}
	f.stored = max(f.stored, at+int64(len(sealed)))
	f.holes.fill(at, at+int64(len(sealed)))
	return nil
}

// pageSize is the unit in which the kernel copies a write into the page
// cache: a write killed by a signal stops at a multiple of it.
var pageSize = int64(os.Getpagesize())

// reserveGapWrite reserves what a write of [off, end) past a gap changes:
// the old last block (padded to a full block) and the new blocks; the gap
// stays a hole.
func (f *File) reserveGapWrite(oldLast, off, end int64) error {
	l := f.v.layout
	if oldLast >= 0 {
		if err := f.reserve(l.BlockOffset(oldLast), l.SealedBlockSize()); err != nil {
			return err
		}
	}
	lo := l.BlockOffset(off / int64(l.blockSize))
	return f.reserve(lo, l.CipherSize(end)-lo)
}

// reserve allocates backing space for [at, at+n) if the backing can.
func (f *File) reserve(at, n int64) error {
	if r, ok := f.b.(Reserver); ok {
		if err := r.Reserve(at, n); err != nil {
			return fmt.Errorf("envelope: reserve space: %w", err)
		}
	}
	return nil
}

// undoable runs change, which rewrites the cipher file from offset at on
// and grows it to at most end bytes, under a journal record of the bytes
// from at to the current end and of the current size, which a crash (or
// change failing) puts back.
func (f *File) undoable(at, end int64, change func() error) error {
	j := f.v.journal
	if j == nil || f.inTx {
		return change()
	}
	before := f.stored
	c := Change{File: f.header.File, At: at, Cut: before, Min: before, Max: max(before, end), Hint: f.hint()}
	if before <= at {
		// Only growth: the record is the old size alone.
		return f.journaled(&c, nil, true, change)
	}
	buf := f.v.bufs.get(int(before - at))
	defer f.v.bufs.put(buf)
	m, err := f.b.ReadAt(*buf, at)
	if err != nil && err != io.EOF {
		return err
	}
	return f.journaled(&c, (*buf)[:m], true, change)
}

// hint returns where the backing file is, for a journal record.
func (f *File) hint() string {
	if h, ok := f.b.(JournalHinter); ok {
		return h.JournalHint()
	}
	return ""
}

// apply writes sealed at cipher offset at and then, if cut >= 0, cuts the
// cipher file to cut bytes. If sp is set, it writes the blocks as sp
// seals them.
func (f *File) apply(sealed []byte, at, cut int64, sp *sealPipe) error {
	if sp != nil {
		// Write the blocks as they are sealed, the sealed ones before
		// the pipeline with its first run, the ones after with its last.
		ss := f.v.layout.SealedBlockSize()
		err := sp.drain(func(lo, hi int) error {
			from, to := sp.base+int64(lo)*ss, sp.base+int64(hi)*ss
			if lo == 0 {
				from = 0
			}
			if hi == sp.n {
				to = int64(len(sealed))
			}
			return f.write(sealed[from:to], at+from)
		})
		if err != nil {
			return err
		}
	} else if err := f.write(sealed, at); err != nil {
		return err
	}
	if cut >= 0 {
		if err := f.b.Truncate(cut); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
		f.stored = cut
		f.holes.fill(cut, math.MaxInt64)
	}
	return nil
}

// Truncate sets the plaintext size. Growing writes a sealed last block of
// zeros at the new end and leaves a hole before it; shrinking reseals the
// new last block and cuts the cipher file.
func (f *File) Truncate(size int64) error {
	if size < 0 {
		return errors.New("envelope: negative size")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return ErrClosed
	}
	f.sparse.changing()
	l := f.v.layout
	bs := int64(l.blockSize)
	newLast := l.lastBlock(size)
	switch {
	case size == f.size:
		return nil
	case size > f.size:
		// Growing is a write of zeros into the new last block; the
		// blocks between stay holes.
		off := max(f.size, newLast*bs)
		zb := f.v.bufs.get(int(size - off))
		defer f.v.bufs.put(zb)
		clear(*zb)
		_, err := f.writeAt(*zb, off)
		return err
	case size == 0:
		if err := f.b.Truncate(l.HeaderSize()); err != nil {
			return fmt.Errorf("envelope: truncate: %w", err)
		}
		f.stored = l.HeaderSize()
		f.holes.fill(0, math.MaxInt64)
		f.cutHoles(0)
	default:
		// Mark the new last block last (and cut it) before cutting the
		// file, so a stop in between leaves a tolerated crash remnant
		// (or, inside a block, is finished by the journal).
		if err := f.rewriteBlock(newLast, f.size, l.blockLen(newLast, size), true, l.CipherSize(size)); err != nil {
			return err
		}
		f.cutHoles(newLast)
	}
	f.size = size
	return nil
}

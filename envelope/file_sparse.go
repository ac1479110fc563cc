package envelope

import (
	"fmt"
	"math"

	"github.com/kmsfs/kmsfs/stanza"
)

// A version 2 file vouches for its holes: its header lists the blocks that
// may be stored as zeros (sparseList), under the header's MAC, so that
// zeroing stored bytes is detected rather than read as zeros. The File
// keeps the list in memory, where it is exact, and writes it to the header
//
//   - before a write makes new holes part of the file (a write past the
//     end, a truncate upward): the header must vouch for them first;
//   - for blocks that were holes and now hold data, lazily: at Sync,
//     Close, Rewrap and the next header write. Until then the header
//     still lists them, which is safe for reads (a block that holds data
//     opens as data) and only leaves the on-disk list looser than the
//     File's, which reads consult.
//
// A header write goes to the slot with the older sequence number, so the
// other slot keeps a complete header; if that other slot was itself
// written since the last Sync, the backing is synced first, so that a
// power loss can never catch both slots half-written.
//
// The list must fit in the header slot beside the stanzas. When it would
// not, the smallest holes are filled with sealed zero blocks until it
// does: the file stays correct and loses only some sparseness.

// vouchedHoles is a version 2 file's holes as they are now (list, exact)
// and how the header's list stands to them (state).
type vouchedHoles struct {
	list  sparseList
	state listState
}

// listState is how the header's sparse list stands to the File's.
type listState uint8

const (
	// listWritten: the header lists exactly the File's holes.
	listWritten listState = iota
	// listLoose: the header still lists blocks filled since; it is
	// written lazily (see above).
	listLoose
	// listPastEnd: the header lists holes at or past the end, which Open
	// dropped (a crash undid the write that made them part of the file).
	// The header follows once the file changes, so that a file only read
	// never writes its header.
	listPastEnd
)

// fill removes blocks [lo, hi), which now hold data or were cut off.
func (s *vouchedHoles) fill(lo, hi int64) {
	if s.list.intersects(lo, hi) {
		s.list = s.list.remove(lo, hi)
		s.state = listLoose
	}
}

// changing notes that the file is about to change: holes that Open
// dropped leave the header with it.
func (s *vouchedHoles) changing() {
	if s.state == listPastEnd {
		s.state = listLoose
	}
}

// behind reports whether the header's list is to be written.
func (s *vouchedHoles) behind() bool { return s.state == listLoose }

// fileZeros is the zero rule of a version 2 file: a block is a hole only
// if the file's sparse list has it. Reads hold f.mu, so the list is stable.
type fileZeros File

func (z *fileZeros) zeroOK(i int64) bool { return (*File)(z).sparse.list.contains(i) }

// zeroRule returns the rule by which f's codec reads all-zero blocks.
func (f *File) zeroRule() zeroRule {
	if f.header.Version == 1 {
		return anyZeros{}
	}
	return (*fileZeros)(f)
}

// vouches reports whether f keeps a sparse list (format version 2).
func (f *File) vouches() bool { return f.header.Version >= 2 }

// Holes returns a copy of the blocks the file vouches may be stored as
// zeros (format version 2; nil for version 1, whose every all-zero block
// reads as zeros).
func (f *File) Holes() []BlockRange {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return append([]BlockRange(nil), f.sparse.list...)
}

// addHoles vouches for blocks [lo, hi), which a write or truncate is about
// to make holes of the file: in memory, then in the header, before the
// change. If the list no longer fits the header, the smallest holes are
// filled with zeros instead (possibly these).
func (f *File) addHoles(lo, hi int64) error {
	was := f.sparse
	f.sparse.list = f.sparse.list.add(lo, hi)
	if err := f.fitSparse(f.header.Stanzas); err != nil {
		f.sparse = was
		return err
	}
	if !f.sparse.list.intersects(lo, hi) {
		return nil // filled with zeros instead: nothing to vouch for
	}
	if err := f.writeHeader(); err != nil {
		f.sparse.list = f.sparse.list.remove(lo, hi)
		return err
	}
	return nil
}

// filled notes that blocks [lo, hi) now hold data: the header's list is
// corrected lazily (see above).
func (f *File) filled(lo, hi int64) {
	if f.vouches() {
		f.sparse.fill(lo, hi)
	}
}

// cutHoles drops the holes from block from on, which a truncate cut off.
func (f *File) cutHoles(from int64) {
	f.filled(from, math.MaxInt64)
}

// sparseFits reports whether f's sparse list fits one header slot beside
// stanzas.
func (f *File) sparseFits(stanzas []stanza.Stanza) bool {
	h := Header{Version: f.header.Version, Stanzas: stanzas, Sparse: f.sparse.list}
	return h.FitsIn(f.v.layout)
}

// fitSparse fills the smallest holes with sealed zero blocks until the list
// fits a header slot beside stanzas.
func (f *File) fitSparse(stanzas []stanza.Stanza) error {
	for len(f.sparse.list) > 0 && !f.sparseFits(stanzas) {
		r := f.sparse.list[f.sparse.list.smallest()]
		if err := f.densify(r); err != nil {
			return fmt.Errorf("envelope: fill hole blocks %d-%d: %w", r.Lo, r.Hi-1, err)
		}
	}
	return nil
}

// densifyChunk bounds the zeros one step of densify writes.
const densifyChunk = 1 << 20

// densify writes sealed zero blocks over the hole r, front to back; each
// step removes the blocks it wrote from the list (writeSteps). A hole
// beyond the end (a gap about to be made) is written as an extension.
func (f *File) densify(r BlockRange) error {
	bs := int64(f.v.layout.blockSize)
	step := max(1, densifyChunk/bs)
	zb := f.v.bufs.get(int(min(step, r.Hi-r.Lo) * bs))
	defer f.v.bufs.put(zb)
	clear(*zb)
	for lo := r.Lo; lo < r.Hi; lo += step {
		if _, err := f.writeSteps((*zb)[:min(step, r.Hi-lo)*bs], lo*bs); err != nil {
			return err
		}
	}
	return nil
}

// flushSparse writes the header if the list in memory is tighter than the
// header's.
func (f *File) flushSparse() error {
	if !f.sparse.behind() {
		return nil
	}
	if err := f.fitSparse(f.header.Stanzas); err != nil {
		return err
	}
	return f.writeHeader()
}

// writeHeader writes f's header with the current sparse list into the slot
// with the older sequence number, under the next sequence number.
func (f *File) writeHeader() error {
	l := f.v.layout
	target := f.slots.target()
	if f.slots.unsynced(1 - target) {
		// The other slot may not be on stable storage yet: make it so
		// before this one is written, so one of them always is.
		if err := f.b.Sync(); err != nil {
			return fmt.Errorf("envelope: sync header slot %d: %w", 1-target, err)
		}
		f.slots.syncedUpTo(f.slots.writes())
	}
	h := f.header
	h.Seq = f.slots.nextSeq()
	h.Sparse = append([]BlockRange(nil), f.sparse.list...)
	b, err := h.marshalSlot(l, f.headerKey)
	if err != nil {
		return err
	}
	if _, err := f.b.WriteAt(b, int64(target*l.slotSize)); err != nil {
		return fmt.Errorf("envelope: write header slot %d: %w", target, err)
	}
	f.slots.written(target, h.Seq)
	f.header = h
	f.sparse.state = listWritten
	return nil
}

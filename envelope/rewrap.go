package envelope

import (
	"crypto/hmac"
	"fmt"
	"slices"

	"github.com/kmsfs/kmsfs/stanza"
)

// Rewrap replaces the file's stanzas with stanzas, which wrap dataKey,
// rewriting only the header and never the content. dataKey must be the
// file's data key (Rewrap checks it, so a mistake cannot lock the file). It
// writes the new header first into the older (or damaged) slot with the
// next sequence number and syncs, then into the other slot and syncs, so
// a crash at any point leaves a slot that opens under the old stanzas or
// one that opens under the new ones.
func (f *File) Rewrap(dataKey []byte, stanzas []stanza.Stanza) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return ErrClosed
	}
	content, hkey, err := deriveKeys(f.v.mem, dataKey, f.header.File, f.header.Version)
	if err != nil {
		return err
	}
	same := hmac.Equal(hkey, f.headerKey)
	f.v.dropKeys(content, hkey)
	if !same {
		return fmt.Errorf("envelope: rewrap: %w (not this file's data key)", stanza.ErrInvalid)
	}
	l := f.v.layout
	target := f.slots.target()
	if f.vouches() {
		if err := f.fitSparse(stanzas); err != nil {
			return err
		}
	}
	h := f.header
	h.Stanzas = slices.Clone(stanzas)
	h.Sparse = append([]BlockRange(nil), f.sparse.list...)
	for _, slot := range [2]int{target, 1 - target} {
		h.Seq = f.slots.nextSeq()
		b, err := h.marshalSlot(l, f.headerKey)
		if err != nil {
			return err
		}
		if _, err := f.b.WriteAt(b, int64(slot*l.slotSize)); err != nil {
			return fmt.Errorf("envelope: write header slot %d: %w", slot, err)
		}
		if err := f.b.Sync(); err != nil {
			return fmt.Errorf("envelope: sync header slot %d: %w", slot, err)
		}
		f.slots.written(slot, h.Seq)
		f.slots.syncedUpTo(f.slots.writes())
		f.header = h
	}
	f.sparse.state = listWritten
	return nil
}

package envelope

// backingHoles is what a File knows of the holes in its cipher file, as
// byte ranges: the journal records an overwrite of holes only as a range
// to punch again, instead of a copy of the new bytes (File.store). It is
// never wrong, only sometimes ignorant: when it cannot be sure, it says
// it knows nothing (holesUnknown) rather than guess.
type backingHoles struct {
	state holesState
	list  []BlockRange // the holes, byte offsets; nil unless holesKnown
}

// holesState is how far a File knows its cipher file's holes.
type holesState uint8

const (
	// holesKnown: list is exact. A File that Create made starts so, with
	// no holes.
	holesKnown holesState = iota
	// holesUnread: not listed yet. Open leaves a File so, and the first
	// classify lists them (HoleLister).
	holesUnread
	// holesUnknown: the cipher file may have holes the File does not
	// know of (it cannot list them, or a change failed midway).
	holesUnknown
)

// add records that [lo, hi) is a hole, if the list is exact.
func (h *backingHoles) add(lo, hi int64) {
	if h.state == holesKnown && lo < hi {
		h.list = append(h.list, BlockRange{lo, hi})
	}
}

// fill records that [lo, hi) holds data (or, beyond the end, nothing).
func (h *backingHoles) fill(lo, hi int64) {
	if len(h.list) > 0 {
		h.list = subtract(h.list, lo, hi)
	}
}

// lose records that a change failed midway, leaving holes the File does
// not know of. Holes not listed yet are listed as they are when first
// needed, so they stay unread.
func (h *backingHoles) lose() {
	if h.state == holesKnown {
		h.state, h.list = holesUnknown, nil
	}
}

// classify reports whether the cipher range [lo, hi) of b, whose size is
// size, is all holes or all data, as far as h knows: it lists b's holes
// (HoleLister) on first use, and then tracks the holes its File makes
// (writes past the end, truncates up) and fills. Otherwise it reports
// neither.
func (h *backingHoles) classify(lo, hi int64, b Backing, size int64) (allHole, allData bool) {
	if h.state == holesUnread {
		// Holes include ranges allocated but never written (fallocate).
		h.state = holesUnknown
		if hl, ok := b.(HoleLister); ok {
			if hs, err := hl.ListHoles(size); err == nil {
				h.state = holesKnown
				for _, r := range hs {
					h.add(r[0], r[1])
				}
			}
		}
	}
	if h.state != holesKnown {
		return false, false
	}
	var in int64
	for _, r := range h.list {
		if r.Hi > lo && r.Lo < hi {
			in += min(r.Hi, hi) - max(r.Lo, lo)
		}
	}
	return in == hi-lo, in == 0
}

package envelope

import (
	"cmp"
	"encoding/binary"
	"errors"
	"slices"
)

// BlockRange is the blocks [Lo, Hi) of a file.
type BlockRange struct{ Lo, Hi int64 }

// maxBlocks bounds a block index read from a header: no file of 2^63
// bytes has more blocks than this at the smallest block size.
const maxBlocks = 1 << 51

// sparseList is a version 2 file's holes: the blocks that it vouches may be
// stored as zeros and then read as zeros. The ranges are sorted, disjoint
// and not adjacent (the canonical form the header encodes). A block
// outside every range must authenticate; the file's last block never
// counts as a hole.
type sparseList []BlockRange

// contains reports whether block i lies in a range.
func (s sparseList) contains(i int64) bool {
	k, _ := slices.BinarySearchFunc(s, i, func(r BlockRange, i int64) int {
		switch {
		case r.Hi <= i:
			return -1
		case r.Lo > i:
			return 1
		}
		return 0
	})
	return k < len(s) && s[k].Lo <= i && i < s[k].Hi
}

// intersects reports whether any block of [lo, hi) lies in a range.
func (s sparseList) intersects(lo, hi int64) bool {
	for _, r := range s {
		if r.Lo < hi && lo < r.Hi {
			return true
		}
	}
	return false
}

// add returns s with [lo, hi) added, merged with the ranges it touches.
func (s sparseList) add(lo, hi int64) sparseList {
	if lo >= hi {
		return s
	}
	out := make(sparseList, 0, len(s)+1)
	for _, r := range s {
		if r.Hi < lo || r.Lo > hi {
			out = append(out, r)
			continue
		}
		lo, hi = min(lo, r.Lo), max(hi, r.Hi)
	}
	out = append(out, BlockRange{lo, hi})
	slices.SortFunc(out, func(a, b BlockRange) int { return cmp.Compare(a.Lo, b.Lo) })
	return out
}

// remove returns s without the blocks [lo, hi); a range it cuts in the
// middle becomes two.
func (s sparseList) remove(lo, hi int64) sparseList {
	if lo >= hi || !s.intersects(lo, hi) {
		return s
	}
	return subtract(s, lo, hi)
}

// subtract returns a new list of the parts of rs's ranges outside
// [lo, hi), in rs's order; rs need not be sorted.
func subtract(rs []BlockRange, lo, hi int64) []BlockRange {
	out := make([]BlockRange, 0, len(rs)+1)
	for _, r := range rs {
		if r.Hi <= lo || r.Lo >= hi {
			out = append(out, r)
			continue
		}
		if r.Lo < lo {
			out = append(out, BlockRange{r.Lo, lo})
		}
		if r.Hi > hi {
			out = append(out, BlockRange{hi, r.Hi})
		}
	}
	return out
}

// smallest returns the index of the range with the fewest blocks.
func (s sparseList) smallest() int {
	k := 0
	for i, r := range s {
		if r.Hi-r.Lo < s[k].Hi-s[k].Lo {
			k = i
		}
	}
	return k
}

// encodedLen returns the bytes appendTo writes for s.
func (s sparseList) encodedLen() int {
	n, prev := 0, int64(0)
	for _, r := range s {
		n += uvarintLen(uint64(r.Lo-prev)) + uvarintLen(uint64(r.Hi-r.Lo))
		prev = r.Hi
	}
	return n
}

// appendTo appends s as pairs of unsigned varints: the gap from the end
// of the previous range (from block 0 for the first), then the length.
func (s sparseList) appendTo(b []byte) []byte {
	prev := int64(0)
	for _, r := range s {
		b = binary.AppendUvarint(b, uint64(r.Lo-prev))
		b = binary.AppendUvarint(b, uint64(r.Hi-r.Lo))
		prev = r.Hi
	}
	return b
}

var errSparse = errors.New("sparse ranges are malformed")

// parseSparse decodes n ranges from the front of b and returns them and the
// rest of b. It accepts the canonical form only: ranges of at least one
// block, each starting after the previous one's end with a gap, within
// maxBlocks.
func parseSparse(b []byte, n int) (sparseList, []byte, error) {
	if n > len(b)/2 { // each range takes at least two bytes
		return nil, nil, errSparse
	}
	s := make(sparseList, 0, n)
	prev := int64(0)
	for i := range n {
		gap, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, nil, errSparse
		}
		b = b[k:]
		length, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, nil, errSparse
		}
		b = b[k:]
		if (i > 0 && gap == 0) || length == 0 || gap > maxBlocks || length > maxBlocks {
			return nil, nil, errSparse
		}
		lo := prev + int64(gap)
		hi := lo + int64(length)
		if hi > maxBlocks {
			return nil, nil, errSparse
		}
		s = append(s, BlockRange{lo, hi})
		prev = hi
	}
	return s, b, nil
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

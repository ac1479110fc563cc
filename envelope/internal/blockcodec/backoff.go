package blockcodec

// maxBackoff is the most blocks a Backoff skips in a row. It bounds what a
// file that turns compressible again after a run of incompressible data
// leaves uncompressed, while trying only about one block in this many on
// data that never compresses.
const maxBackoff = 64

// Backoff decides, for the blocks of one file written in order, whether a
// block is worth a compression attempt. On incompressible data the attempt
// costs about as much as sealing the block and saves nothing, so after a
// block that was tried and stored as is, the next k blocks are stored as
// is without a try, with k = 1, 2, 4 … up to maxBackoff for each further
// failed try in a row; a try that compresses resets k.
//
// The zero value tries the first block. A Backoff is not safe for
// concurrent use: the caller keeps one per file, under the file's lock.
type Backoff struct {
	skip int // blocks still to store without a try
	k    int // the skip after the next failed try, 0 meaning 1
}

// Try reports whether to try compressing the next block. When it returns
// true, the caller tries and reports the outcome with Record; when false,
// the caller stores the block as is and calls nothing.
func (b *Backoff) Try() bool {
	if b.skip > 0 {
		b.skip--
		return false
	}
	return true
}

// Record takes the outcome of a try: whether Compress found the block
// worth storing compressed.
func (b *Backoff) Record(compressed bool) {
	if compressed {
		b.k = 0
		return
	}
	b.skip = max(b.k, 1)
	b.k = min(2*b.skip, maxBackoff)
}

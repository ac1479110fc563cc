package envelope

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// File is the plaintext view of one cipher file: random-access reads and
// writes that touch only the blocks a request covers. It is safe for
// concurrent use: reads run in parallel with each other, writes and
// truncates exclude everything else. All handles of one inode should share
// one File, since it keeps the plaintext size in memory.
type File struct {
	v         *Volume
	b         Backing
	codec     *Codec // nil once the File is closed
	headerKey []byte
	header    Header
	recovered bool // Open applied journal records to the backing; never changes

	mu     sync.RWMutex
	size   int64
	stored int64        // the size of the cipher file
	inTx   bool         // a journal record covers the change in progress (File.journaled)
	slots  headerSlots  // what each header slot holds (file_sparse.go)
	sparse vouchedHoles // a version 2 file's holes (file_sparse.go)
	holes  backingHoles // the cipher file's holes, for the journal
}

// Size returns the plaintext size.
func (f *File) Size() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.size
}

// isClosed reports whether Close has run; f.mu is held.
func (f *File) isClosed() bool { return f.codec == nil }

// Recovered reports whether Open finished or undid, from the journal, a
// change that a crash interrupted: the backing file's size may have
// changed since the caller last looked.
func (f *File) Recovered() bool { return f.recovered }

// ID returns the file ID from the header.
func (f *File) ID() FileID { return f.header.File }

// Header returns a copy of the header the file was opened by.
func (f *File) Header() Header {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h := f.header
	h.Stanzas = append(h.Stanzas[:0:0], h.Stanzas...)
	return h
}

// Sync writes the header's sparse list if it is behind (see
// file_sparse.go) and flushes the backing file to stable storage.
func (f *File) Sync() error {
	f.mu.Lock()
	if f.isClosed() {
		f.mu.Unlock()
		return ErrClosed
	}
	err := f.flushSparse()
	n := f.slots.writes()
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if err := f.b.Sync(); err != nil {
		return err
	}
	f.mu.Lock()
	f.slots.syncedUpTo(n)
	f.mu.Unlock()
	return nil
}

// Flush writes the header's sparse list if it is behind (see
// file_sparse.go), without syncing. Whoever shares one File between
// handles calls it before the File's last user lets go, so that no other
// File is opened on the cipher file while this one may still write.
func (f *File) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return ErrClosed
	}
	return f.flushSparse()
}

// Close writes the header's sparse list if it is behind and forgets the
// file's keys. It does not close the Backing. The error is the header
// write's: the keys are forgotten either way.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return nil
	}
	err := f.flushSparse()
	f.v.mem.Free(f.headerKey)
	f.headerKey = nil
	f.codec.wipe()
	f.codec = nil
	return err
}

// ReadAt reads len(p) plaintext bytes at off, as io.ReaderAt. It reads and
// opens only the blocks the range covers. If a block fails to
// authenticate, n counts the bytes before it and err wraps ErrAuth and
// names the block; p beyond n holds no plaintext of that block.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("envelope: negative offset")
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.isClosed() {
		return 0, ErrClosed
	}
	want := 0
	if off < f.size {
		want = int(min(int64(len(p)), f.size-off))
	}
	n, err := f.readRange(p[:want], off, f.size)
	if err == nil && want < len(p) {
		err = io.EOF
		if f.stored != f.v.layout.CipherSize(f.size) {
			// The cipher file ends in a fragment too short for a block.
			err = fmt.Errorf("envelope: read: stored file cut short after byte %d: %w", f.size, ErrAuth)
		}
	}
	return n, err
}

// cutShort reads the part of p before block bad, which the cipher file is
// missing, and fails naming that block.
func (f *File) cutShort(p []byte, off, size, bad int64) (int, error) {
	n := 0
	if good := bad*int64(f.v.layout.blockSize) - off; good > 0 {
		var err error
		if n, err = f.readRange(p[:good], off, size); err != nil {
			return n, err
		}
	}
	return n, fmt.Errorf("envelope: read: stored file cut short: %w", &BlockError{Block: bad, Err: ErrAuth})
}

// readRange fills p from plaintext offset off of a file of size bytes;
// off+len(p) <= size. Blocks fully inside p are opened straight into p;
// the partial blocks at either edge go through a scratch block.
func (f *File) readRange(p []byte, off, size int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l := f.v.layout
	bs := int64(l.blockSize)
	end := off + int64(len(p))
	b0, b1 := off/bs, (end-1)/bs
	last := l.lastBlock(size)

	sealedOff := l.BlockOffset(b0)
	sealedEnd := min(l.BlockOffset(b1+1), l.CipherSize(size))
	buf := f.v.bufs.get(int(sealedEnd - sealedOff))
	defer f.v.bufs.put(buf)
	sealed := *buf
	m, err := f.b.ReadAt(sealed, sealedOff)
	if m < len(sealed) {
		if err != nil && err != io.EOF {
			return 0, fmt.Errorf("envelope: read blocks %d-%d: %w", b0, b1, err)
		}
		// The cipher file is shorter than the File knows (cut behind its
		// back): the block holding byte m is missing, never zeros.
		return f.cutShort(p, off, size, b0+int64(m)/l.SealedBlockSize())
	}

	// The edge blocks that p covers only in part go through a scratch
	// block; blocks [mid0, mid1) lie wholly inside p.
	headPartial := off%bs != 0
	tailPartial := end < min((b1+1)*bs, size)
	edge := func(i int64) error {
		bl := l.blockLen(i, size)
		sb := f.v.bufs.get(bl)
		defer f.v.bufs.put(sb)
		so := l.BlockOffset(i) - sealedOff
		if _, err := f.codec.Open(*sb, sealed[so:so+int64(bl)+BlockOverhead], i, last); err != nil {
			return fmt.Errorf("envelope: read: %w", err)
		}
		lo, hi := max(off, i*bs), min(end, i*bs+int64(bl))
		copy(p[lo-off:hi-off], (*sb)[lo-i*bs:hi-i*bs])
		return nil
	}
	if b0 == b1 && (headPartial || tailPartial) {
		if err := edge(b0); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	mid0, mid1 := b0, b1+1
	if headPartial {
		if err := edge(b0); err != nil {
			return 0, err
		}
		mid0++
	}
	if tailPartial {
		mid1--
	}
	if mid1 > mid0 {
		pOff := mid0*bs - off
		pEnd := min(mid1*bs, size) - off
		so := l.BlockOffset(mid0) - sealedOff
		se := so + int64(l.SealedLen(int(pEnd-pOff)))
		n, err := f.codec.Open(p[pOff:pEnd], sealed[so:se], mid0, last)
		if err != nil {
			return int(pOff) + n, fmt.Errorf("envelope: read: %w", err)
		}
	}
	if tailPartial {
		if err := edge(b1); err != nil {
			return int(b1*bs - off), err
		}
	}
	return len(p), nil
}

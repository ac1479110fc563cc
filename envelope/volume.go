package envelope

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/kmsfs/kmsfs/internal/parallel"
	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/stanza"
)

// DefaultParallelMin is the request size from which blocks are sealed and
// opened in parallel, chosen from BenchmarkCodec on a 2-core machine: below
// it, starting goroutines costs more than it saves.
const DefaultParallelMin = 64 << 10

// Options configure a Volume.
type Options struct {
	// Layout is the volume's block and header slot size.
	Layout Layout
	// Volume is the volume ID that every file header must carry.
	Volume VolumeID
	// Rand supplies nonces and file IDs; nil means crypto/rand.Reader. It
	// must be safe for concurrent use if Files are used concurrently.
	Rand io.Reader
	// Workers caps the goroutines one request uses; 0 means GOMAXPROCS.
	Workers int
	// ParallelMin is the request size in bytes from which blocks are
	// processed in parallel; 0 means DefaultParallelMin, negative never.
	ParallelMin int
	// Journal, if set, makes every change to a cipher file atomic with
	// respect to a crash of the process, and Open applies what a crash
	// left in it (package journal). The Volume does not close it.
	Journal Journal
	// FormatVersion is the format version Create writes: 0 means Version.
	// Version 1 (holes unauthenticated) is for tests and golden vectors.
	FormatVersion int
	// Mem, if set, holds every file's keys and key schedules (locked
	// memory, zeroed when a file closes); nil keeps them on the heap,
	// still zeroed where the implementation allows.
	Mem *secmem.Arena
}

// Volume holds what all files of one cipher dir share: the layout, the
// volume ID, the random source, the parallelism policy and pooled buffers.
// It is safe for concurrent use and needs no closing.
type Volume struct {
	layout      Layout
	id          VolumeID
	rand        io.Reader
	workers     int
	parallelMin int
	bufs        bufPool
	helpers     *parallel.Pool[[aadSize]byte] // and the pool of block additional data buffers
	journal     Journal
	format      int
	mem         *secmem.Arena
}

// NewVolume returns a Volume configured by o.
func NewVolume(o Options) (*Volume, error) {
	if o.Layout == (Layout{}) {
		return nil, errors.New("envelope: volume options need a Layout")
	}
	v := &Volume{layout: o.Layout, id: o.Volume, rand: o.Rand, workers: o.Workers, parallelMin: o.ParallelMin, journal: o.Journal, format: o.FormatVersion, mem: o.Mem}
	switch v.format {
	case 0:
		v.format = Version
	case MinVersion, Version:
	default:
		return nil, fmt.Errorf("envelope: format version %d, want %d or %d", v.format, MinVersion, Version)
	}
	if v.rand == nil {
		v.rand = rand.Reader
	}
	if v.workers <= 0 {
		v.workers = runtime.GOMAXPROCS(0)
	}
	switch {
	case v.parallelMin == 0:
		v.parallelMin = DefaultParallelMin
	case v.parallelMin < 0:
		v.parallelMin = 0
	}
	v.helpers = parallel.New[[aadSize]byte]()
	return v, nil
}

// Layout returns the volume's layout.
func (v *Volume) Layout() Layout { return v.layout }

// Backing is the cipher file under a File. *os.File satisfies it. The File
// does not close it: whoever opened it does, after closing the File.
type Backing interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (os.FileInfo, error)
}

// Reserver is a Backing that can reserve space for a range before it is
// written (fallocate with KEEP_SIZE). A File uses it before a write that
// changes the file in more than one step, so that a full disk refuses the
// write before anything changes.
type Reserver interface {
	Reserve(off, n int64) error
}

// HoleLister is a Backing that can list its holes below size (lseek
// SEEK_HOLE and SEEK_DATA), as [start, end) pairs. Open uses it for a
// sparse file, so that the write journal knows which writes fill holes.
type HoleLister interface {
	ListHoles(size int64) ([][2]int64, error)
}

// Puncher is a Backing that can deallocate a range (fallocate
// PUNCH_HOLE|KEEP_SIZE), which then reads as zeros.
type Puncher interface {
	Punch(off, n int64) error
}

// KeyUnwrapper recovers a file's data key from the stanzas of its header:
// the data-key manager of package keysource implements it. The returned
// key is a copy that belongs to the caller: Open clears it once it has
// derived the file's keys.
type KeyUnwrapper interface {
	UnwrapKey(ctx context.Context, stanzas []stanza.Stanza) ([]byte, error)
}

// dropKeys zeroes and frees a file's two derived keys.
func (v *Volume) dropKeys(content, header []byte) {
	v.mem.Free(content)
	v.mem.Free(header)
}

// Create writes a new header for dataKey, wrapped as stanzas, to b, which
// must be empty, and returns the File over it. Both header slots get the
// same header at sequence 1. The File keeps no reference to dataKey.
func (v *Volume) Create(b Backing, dataKey []byte, stanzas []stanza.Stanza) (*File, error) {
	var id FileID
	if _, err := readFull(v.rand, id[:]); err != nil {
		return nil, fmt.Errorf("envelope: file ID: %w", err)
	}
	content, hkey, err := deriveKeys(v.mem, dataKey, id, v.format)
	if err != nil {
		return nil, err
	}
	h := Header{Version: v.format, Volume: v.id, File: id, Seq: 1, Stanzas: stanzas}
	slot, err := h.marshalSlot(v.layout, hkey)
	if err != nil {
		v.dropKeys(content, hkey)
		return nil, err
	}
	hdr := make([]byte, 0, v.layout.HeaderSize())
	hdr = append(append(hdr, slot...), slot...)
	if _, err := b.WriteAt(hdr, 0); err != nil {
		v.dropKeys(content, hkey)
		return nil, fmt.Errorf("envelope: write header: %w", err)
	}
	f := &File{v: v, b: b, headerKey: hkey, header: h, slots: headerSlots{seq: [2]uint64{1, 1}}, stored: v.layout.HeaderSize()}
	if f.codec, err = v.newCodec(content, id, f.zeroRule()); err != nil {
		v.mem.Free(hkey)
		return nil, err
	}
	return f, nil
}

// Open reads b's header, recovers the data key through u from the newest
// header slot that authenticates (falling back to the other slot), and
// returns the File. An empty b has no header: Open returns ErrNoHeader.
// Errors from u are returned wrapped, so keysource sentinels still match.
func (v *Volume) Open(ctx context.Context, b Backing, u KeyUnwrapper) (*File, error) {
	fi, err := b.Stat()
	if err != nil {
		return nil, fmt.Errorf("envelope: stat: %w", err)
	}
	size := fi.Size()
	if size == 0 {
		return nil, ErrNoHeader
	}
	l := v.layout
	if size < l.HeaderSize() {
		return nil, fmt.Errorf("envelope: file of %d bytes is shorter than its header: %w", size, ErrFormat)
	}
	rawBuf := v.bufs.get(int(l.HeaderSize()))
	defer v.bufs.put(rawBuf) // the parsed headers keep no reference to it
	raw := *rawBuf
	if _, err := b.ReadAt(raw, 0); err != nil {
		return nil, fmt.Errorf("envelope: read header: %w", err)
	}
	slots := [2][]byte{raw[:l.slotSize], raw[l.slotSize:]}
	same := string(slots[0]) == string(slots[1]) // both slots written alike, as after a create
	var hs [2]*Header
	var firstErr error
	for i, s := range slots {
		if i == 1 && same {
			hs[1] = hs[0] // the same bytes parse the same
			break
		}
		h, err := ParseHeaderSlot(l, s)
		if err == nil && h.Volume != v.id {
			err = fmt.Errorf("header names volume %x: %w", h.Volume, ErrOtherVolume)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("envelope: header slot %d: %w", i, err)
			}
			continue
		}
		hs[i] = h
	}
	order := [2]int{0, 1}
	if hs[1] != nil && (hs[0] == nil || hs[1].Seq > hs[0].Seq) {
		order = [2]int{1, 0}
	}
	for k, i := range order {
		h := hs[i]
		if h == nil {
			continue
		}
		if k == 1 && hs[order[0]] != nil && same {
			break // the same bytes failed already
		}
		dk, err := u.UnwrapKey(ctx, h.Stanzas)
		if err != nil {
			err = fmt.Errorf("envelope: header slot %d: %w", i, err)
			if firstErr == nil || errors.Is(firstErr, ErrFormat) || errors.Is(firstErr, ErrAuth) {
				firstErr = err
			}
			continue
		}
		content, hkey, err := deriveKeys(v.mem, dk, h.File, h.Version)
		clear(dk)
		if err != nil {
			return nil, err
		}
		if !verifySlot(slots[i], hkey) {
			v.dropKeys(content, hkey)
			if firstErr == nil || errors.Is(firstErr, ErrFormat) {
				firstErr = fmt.Errorf("envelope: header slot %d: %w", i, ErrAuth)
			}
			continue
		}
		recovered := false
		if v.journal != nil {
			// Finish or undo the change a crash interrupted, before
			// anything reads the file. If that fails the file still
			// opens; a torn block then fails to authenticate.
			if recovered, _ = v.journal.Recover(h.File, b); recovered {
				if fi, err = b.Stat(); err != nil {
					v.dropKeys(content, hkey)
					return nil, fmt.Errorf("envelope: stat: %w", err)
				}
				size = fi.Size()
			}
		}
		// The holes are listed when the journal first needs them.
		f := &File{v: v, b: b, headerKey: hkey, header: *h, size: l.PlainSize(size), stored: size, recovered: recovered,
			holes: backingHoles{state: holesUnread}, sparse: vouchedHoles{list: sparseList(h.Sparse)}}
		f.slots.seq[i] = h.Seq
		if o := hs[1-i]; o != nil && o.File == h.File && (same || verifySlot(slots[1-i], hkey)) {
			f.slots.seq[1-i] = o.Seq
		}
		if f.codec, err = v.newCodec(content, h.File, f.zeroRule()); err != nil {
			v.mem.Free(hkey)
			return nil, err
		}
		if last := l.lastBlock(f.size); f.sparse.list.intersects(max(last, 0), maxBlocks) {
			// Holes at or past the end (a crash undid the write that
			// made them part of the file) are none: the last block never
			// is one. The header follows with the next change.
			f.sparse = vouchedHoles{list: f.sparse.list.remove(max(last, 0), maxBlocks), state: listPastEnd}
		}
		return f, nil
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("envelope: no usable header slot: %w", ErrFormat)
	}
	return nil, firstErr
}

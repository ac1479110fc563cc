package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
)

// File states of an fsck report.
const (
	FsckOK = "ok"
	// FsckEmpty is a file created and never written: it has no header
	// and reads as empty, as through a mount.
	FsckEmpty = "empty"
	// FsckDamaged is a file whose header or some blocks fail to
	// authenticate, or that was cut short.
	FsckDamaged = "damaged"
	// FsckForeign is a regular file that is not a kmsfs file of this
	// volume.
	FsckForeign = "foreign"
	// FsckKeyUnavailable is a file whose data key no configured key
	// unwraps now: its blocks were not checked.
	FsckKeyUnavailable = "key-unavailable"
	// FsckUnreadable is a file the check could not read (permissions,
	// I/O error).
	FsckUnreadable = "unreadable"
)

// fsckWorkers bounds the files checked at once: enough to keep the cores
// and the key source busy, few enough not to flood a KMS.
func fsckWorkers() int { return min(max(runtime.GOMAXPROCS(0), 2), 8) }

// FsckBlock is a content block that failed to authenticate.
type FsckBlock struct {
	// Index is the block's index in the file.
	Index int64 `json:"index"`
	// Offset is the plaintext offset where the block starts.
	Offset int64 `json:"offset"`
}

// FsckFile is what fsck found of one file.
type FsckFile struct {
	// Path is relative to the cipher dir.
	Path string `json:"path"`
	// State is one of the Fsck constants.
	State string `json:"state"`
	// Detail says why a file is not ok.
	Detail string `json:"detail,omitempty"`
	// BadSlots lists the header slots (0, 1) that fail to authenticate
	// under the file's key; the file still opens while one slot is good.
	BadSlots []int `json:"bad_header_slots,omitempty"`
	// Blocks lists the blocks that fail to authenticate.
	Blocks []FsckBlock `json:"damaged_blocks,omitempty"`
	// Truncated says the cipher file ends inside a block or its last
	// block fails: it was cut short (or its tail changed).
	Truncated bool `json:"truncated,omitempty"`
	// Recovered says --repair applied journal records to this file.
	Recovered bool `json:"recovered,omitempty"`
}

// FsckReport is what Fsck found in a cipher dir.
type FsckReport struct {
	Dir    string `json:"cipher_dir"`
	Volume string `json:"volume_id"`
	// Files counts the regular files checked; OK those found intact.
	Files int64 `json:"files"`
	OK    int64 `json:"ok"`
	// Problems lists every file that is not ok, by path.
	Problems []FsckFile `json:"problems,omitempty"`
	// Skipped counts entries neither a regular file nor a directory
	// (symbolic links, FIFOs, devices): never opened.
	Skipped int64 `json:"skipped"`
	// Journal lists the entries of the journal directory: records of
	// writes a crash interrupted (crash remnants) until they are applied.
	Journal []string `json:"journal_entries,omitempty"`
	// Pending counts the journal records of interrupted writes not yet
	// applied (read-write only: a read-only check lists Journal instead).
	Pending int `json:"pending_journal_records"`
	// Repaired counts the journal records applied by this run (--repair).
	Repaired int `json:"repaired"`
	// RepairError is the first error applying them.
	RepairError string `json:"repair_error,omitempty"`
}

// Clean reports whether every file is intact and nothing is pending.
func (r *FsckReport) Clean() bool {
	for _, p := range r.Problems {
		if p.State != FsckEmpty {
			return false
		}
	}
	return r.Pending == 0 && len(r.Journal) == 0
}

// FsckOptions say what Fsck reports along the way.
type FsckOptions struct {
	// Progress, if set, is called after each file with the files done and
	// the total; it is called from one goroutine at a time.
	Progress func(done, total int)
}

// Fsck checks every file of the volume: both header slots against the
// file's key, and every block. It changes nothing; a volume opened
// read-write has applied its pending journal records at Open already
// (v.Recovery), which the report carries. ctx cancels the check.
func (v *Volume) Fsck(ctx context.Context, o FsckOptions) (*FsckReport, error) {
	r := &FsckReport{Dir: v.Dir, Volume: v.Conf().VolumeID, Pending: v.Recovery.Pending - v.Recovery.Recovered, Repaired: v.Recovery.Recovered}
	if v.Recovery.Err != nil {
		r.RepairError = v.Recovery.Err.Error()
	}
	if r.Pending < 0 {
		r.Pending = 0
	}
	var paths []string
	err := filepath.WalkDir(v.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("volume: fsck %s: %w", v.Dir, err)
		}
		rel, _ := filepath.Rel(v.Dir, p)
		switch {
		case rel == ConfName:
			return nil
		case rel == JournalName && d.IsDir():
			if v.Journal == nil {
				r.Journal, err = journalEntries(p)
			}
			if err != nil {
				return err
			}
			return fs.SkipDir
		case d.IsDir():
			return nil
		case d.Type().IsRegular():
			paths = append(paths, rel)
		default:
			r.Skipped++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	results := make([]FsckFile, len(paths))
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for range fsckWorkers() {
		wg.Go(func() {
			for i := range work {
				results[i] = v.fsckFile(ctx, paths[i])
				if o.Progress != nil {
					mu.Lock()
					done++
					o.Progress(done, len(paths))
					mu.Unlock()
				}
			}
		})
	}
	for i := range paths {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("volume: fsck %s: %w", v.Dir, err)
	}
	r.Files = int64(len(paths))
	for _, f := range results {
		if f.State == FsckOK && !f.Recovered {
			r.OK++
			continue
		}
		r.Problems = append(r.Problems, f)
	}
	sort.Slice(r.Problems, func(i, j int) bool { return r.Problems[i].Path < r.Problems[j].Path })
	return r, nil
}

// journalEntries lists the journal directory's entries that hold a
// record, without opening the journal (which would lock it and apply its
// records). A slot whose record was cleared is all zeros at its start.
func journalEntries(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("volume: fsck: read journal %s: %w", dir, err)
	}
	var names []string
	head := make([]byte, 512)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "slot-") && e.Type().IsRegular() && idleSlot(filepath.Join(dir, e.Name()), head) {
			continue
		}
		names = append(names, e.Name())
	}
	return names, nil
}

// idleSlot reports whether the journal slot file at p holds no record.
func idleSlot(p string, head []byte) bool {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return false
	}
	for _, c := range head[:n] {
		if c != 0 {
			return false
		}
	}
	return true
}

// fsckFile checks the file at rel.
func (v *Volume) fsckFile(ctx context.Context, rel string) FsckFile {
	r := FsckFile{Path: rel, State: FsckOK}
	b, err := OpenCipherFile(filepath.Join(v.Dir, rel))
	if err != nil {
		r.State, r.Detail = FsckUnreadable, err.Error()
		return r
	}
	defer b.Close()
	f, err := v.Format.Open(ctx, b, v.Keys)
	switch {
	case errors.Is(err, envelope.ErrNoHeader):
		r.State = FsckEmpty
		return r
	case errors.Is(err, envelope.ErrAuth):
		r.State, r.Detail = FsckDamaged, "no header slot authenticates: "+err.Error()
		r.BadSlots = []int{0, 1}
		return r
	case errors.Is(err, envelope.ErrFormat), errors.Is(err, envelope.ErrOtherVolume):
		r.State, r.Detail = FsckForeign, err.Error()
		return r
	case err != nil:
		r.State, r.Detail = FsckKeyUnavailable, err.Error()
		return r
	}
	r.Recovered = f.Recovered()
	defer f.Close()
	r.BadSlots = v.badSlots(ctx, b)
	if len(r.BadSlots) > 0 {
		r.State, r.Detail = FsckDamaged, fmt.Sprintf("header slot %d fails to authenticate; the file opens from the other", r.BadSlots[0])
	}
	v.fsckBlocks(f, &r)
	if r.State == FsckDamaged && r.Detail == "" {
		r.Detail = fmt.Sprintf("%d blocks fail to authenticate", len(r.Blocks))
		if r.Truncated {
			r.Detail += "; the file was cut short (or its last block changed)"
		}
	}
	return r
}

// badSlots returns the header slots of b that fail to authenticate. Open
// falls back to the other slot silently, so each slot is opened alone:
// b seen with that slot in both places.
func (v *Volume) badSlots(ctx context.Context, b *os.File) []int {
	l := v.Format.Layout()
	raw := make([]byte, l.HeaderSize())
	if _, err := b.ReadAt(raw, 0); err != nil {
		return nil
	}
	ss := l.SlotSize()
	if string(raw[:ss]) == string(raw[ss:]) {
		return nil // the same bytes, and Open authenticated them
	}
	var bad []int
	for i := range 2 {
		f, err := v.Format.Open(ctx, oneSlot{File: b, slot: raw[i*ss : (i+1)*ss]}, v.Keys)
		if err == nil {
			f.Close()
		}
		if errors.Is(err, envelope.ErrAuth) || errors.Is(err, envelope.ErrFormat) {
			bad = append(bad, i)
		}
	}
	return bad
}

// oneSlot is a cipher file read as if both header slots held slot. It is
// only read.
type oneSlot struct {
	*os.File
	slot []byte
}

func (o oneSlot) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.File.ReadAt(p, off)
	ss := int64(len(o.slot))
	for i := range p[:n] {
		if pos := off + int64(i); pos < 2*ss {
			p[i] = o.slot[pos%ss]
		}
	}
	return n, err
}

// fsckBlocks authenticates every block of f, going on past a damaged one.
func (v *Volume) fsckBlocks(f *envelope.File, r *FsckFile) {
	bs := int64(v.Format.Layout().BlockSize())
	buf := make([]byte, v.chunkSize())
	defer clear(buf) // plaintext
	size := f.Size()
	last := (size - 1) / bs
	var off int64
	for off < size || size == 0 {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		if err == io.EOF || (err == nil && off >= size) {
			return
		}
		if err == nil {
			continue
		}
		var be *envelope.BlockError
		switch {
		case errors.As(err, &be):
			r.State = FsckDamaged
			r.Blocks = append(r.Blocks, FsckBlock{Index: be.Block, Offset: be.Block * bs})
			if be.Block == last {
				r.Truncated = true
			}
			off = (be.Block + 1) * bs
		case errors.Is(err, envelope.ErrAuth):
			// The cipher file ends in a fragment too short for a block.
			r.State, r.Truncated = FsckDamaged, true
			return
		default:
			r.State, r.Detail = FsckUnreadable, err.Error()
			return
		}
	}
}

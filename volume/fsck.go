package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
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
	// FsckBadName is a file of a volume with encrypted names that reads
	// intact, but whose name, or a name on whose path, fails to
	// authenticate (FsckFile.NameError): changed, or moved there from
	// another directory. A mount does not show it.
	FsckBadName = "bad-name"
	// FsckCrashRemnants is a file that reads intact but holds crash
	// remnants: blocks sealed marked last that are not its last, which
	// a truncate or a write past a gap stopped by a crash leaves. Reads
	// accept them; --repair reseals them marked not last.
	FsckCrashRemnants = "crash-remnants"
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
	// PlainPath is the file's path as a mount shows it, on a volume with
	// encrypted names whose name key opened; empty for kmsfs's own files
	// and when NameError says why there is none.
	PlainPath string `json:"plain_path,omitempty"`
	// NameError says why a file of a volume with encrypted names has no
	// plain path: a name on its path fails to authenticate (ErrNameAuth),
	// or a directory's ID or a long name's side file is unreadable.
	NameError string `json:"name_error,omitempty"`
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
	// Remnants lists the crash remnants found: blocks sealed marked last
	// that are not the file's last (see FsckCrashRemnants).
	Remnants []FsckBlock `json:"remnant_blocks,omitempty"`
	// RemnantsCleared counts the remnants --repair resealed marked not
	// last; once all are, the file's state is ok.
	RemnantsCleared int `json:"remnants_cleared,omitempty"`
}

// FsckReport is what Fsck found in a cipher dir.
type FsckReport struct {
	Dir    string `json:"cipher_dir"`
	Volume string `json:"volume_id"`
	// Files counts the regular files checked; OK those found intact
	// with nothing repaired.
	Files int64 `json:"files"`
	OK    int64 `json:"ok"`
	// Bytes sums the sizes of the cipher files checked.
	Bytes int64 `json:"bytes"`
	// Problems lists every file that is not ok, or that --repair
	// changed (state ok, with Recovered or RemnantsCleared), by path.
	Problems []FsckFile `json:"problems,omitempty"`
	// Skipped counts entries neither a regular file nor a directory
	// (symbolic links, FIFOs, devices) and, with encrypted names, the side
	// files of long names and symbolic link targets: never opened.
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
	// RemnantsCleared counts the crash remnants resealed by this run
	// (--repair), in all files.
	RemnantsCleared int `json:"remnants_cleared"`
	// NameKeyError says why the name key file of a volume with encrypted
	// names was refused (opened with Options.NameKeyMayFail): the file is
	// listed in Problems, and every file by its cipher path only.
	NameKeyError string `json:"name_key_error,omitempty"`
}

// Clean reports whether every file is intact, with no crash remnant left,
// and nothing is pending: files that --repair set right count as clean.
func (r *FsckReport) Clean() bool {
	for _, p := range r.Problems {
		if p.State != FsckEmpty && p.State != FsckOK {
			return false
		}
	}
	return r.Pending == 0 && len(r.Journal) == 0
}

// FsckOptions are the choices of a check.
type FsckOptions struct {
	// Repair reseals crash remnants marked not last (File.ClearRemnants)
	// in files that are otherwise intact. It needs a read-write volume
	// (one with a journal, so each block is rewritten crash-safely); the
	// volume's pending journal records were applied when it was opened.
	// Nothing else is ever written: no damaged block, header or size.
	Repair bool
	// Progress, if set, is told how far the check has got: after a cheap
	// first pass that sums the files' sizes, then as blocks are checked.
	// Calls never overlap; it should return quickly.
	Progress func(FsckProgress)
}

// Fsck checks every file of the volume: both header slots against the
// file's key, and every block, several files at once. Without o.Repair it
// changes nothing; a volume opened read-write has applied its pending
// journal records at Open already (v.Recovery), which the report carries.
// ctx cancels the check.
func (v *Volume) Fsck(ctx context.Context, o FsckOptions) (*FsckReport, error) {
	if o.Repair && v.Journal == nil {
		return nil, fmt.Errorf("volume: fsck --repair %s: the volume is opened read-only; repair needs its journal", v.Dir)
	}
	r := &FsckReport{Dir: v.Dir, Volume: v.Conf().VolumeID, Pending: v.Recovery.Pending - v.Recovery.Recovered, Repaired: v.Recovery.Recovered}
	if v.Recovery.Err != nil {
		r.RepairError = v.Recovery.Err.Error()
	}
	if v.nameKeyErr != nil {
		r.NameKeyError = v.nameKeyErr.Error()
	}
	if r.Pending < 0 {
		r.Pending = 0
	}
	// Each file's plain path, with encrypted names: a file whose names do
	// not authenticate is one a mount hides, and fsck reports it.
	pp := v.plainPaths()
	prog, err := v.newFsckProgress(ctx, o.Progress)
	if err != nil {
		return nil, err
	}
	// The walk opens each file relative to its directory and hands it to
	// a worker, which closes it: at most one file per worker is open.
	type job struct {
		rel, plain, nameErr string
		f                   *os.File
		size                int64
		err                 error
	}
	work := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range fsckWorkers() {
		wg.Go(func() {
			// One read buffer per worker, not per file: a fresh
			// megabyte for each small file costs more than checking it.
			buf := make([]byte, v.chunkSize())
			defer clear(buf) // plaintext
			for j := range work {
				res := FsckFile{Path: j.rel, State: FsckUnreadable}
				fp := prog.file()
				if j.err != nil {
					res.Detail = fmt.Sprintf("volume: open %s: %v", j.rel, j.err)
				} else {
					res = v.fsckFile(ctx, j.rel, j.f, o.Repair, fp, buf)
					j.f.Close()
				}
				res.PlainPath, res.NameError = j.plain, j.nameErr
				if j.nameErr != "" && (res.State == FsckOK || res.State == FsckEmpty) {
					res.State, res.Detail = FsckBadName, "its name does not authenticate, so a mount does not show it"
				}
				fp.done(j.size)
				if j.rel == NamesName && v.nameKeyErr != nil {
					nameKeyProblem(&res, v.nameKeyErr)
				}
				mu.Lock()
				r.Files++
				r.Bytes += j.size
				r.RemnantsCleared += res.RemnantsCleared
				if res.State == FsckOK && !res.Recovered && res.RemnantsCleared == 0 {
					r.OK++
				} else {
					r.Problems = append(r.Problems, res)
				}
				mu.Unlock()
			}
		})
	}
	err = cipherWalk{
		visit: func(e cipherEntry) (bool, error) {
			switch {
			case e.rel == JournalName && e.typ.IsDir():
				if v.Journal != nil {
					return false, nil
				}
				var err error
				r.Journal, err = journalEntries(e)
				return false, err
			case e.typ.IsDir():
				return true, nil
			case e.volumeFile(v.encNames):
				f, size, err := e.open(0, unix.S_IFREG)
				if o.Repair && err == nil {
					// Read-write only where it works: a file that
					// opens read-only is still checked, and a repair
					// it would need fails naming it.
					if g, gsize, gerr := e.open(unix.O_RDWR, unix.S_IFREG); gerr == nil {
						f.Close()
						f, size = g, gsize
					}
				}
				// The walk is one goroutine, and so may use pp.
				plain, nameErr := pp.annotate(e.rel)
				work <- job{rel: e.rel, plain: plain, nameErr: nameErr, f: f, size: size, err: err}
			default:
				r.Skipped++
			}
			return false, nil
		},
		dirErr: func(rel string, err error) error {
			return fmt.Errorf("volume: fsck %s: %s: %w", v.Dir, rel, err)
		},
	}.run(ctx, v.Dir)
	close(work)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("volume: fsck %s: %w", v.Dir, err)
	}
	if v.nameKeyErr != nil && !slices.ContainsFunc(r.Problems, func(p FsckFile) bool { return p.Path == NamesName }) {
		// Missing, or not a regular file: the walk checked no such file.
		p := FsckFile{Path: NamesName}
		nameKeyProblem(&p, v.nameKeyErr)
		r.Problems = append(r.Problems, p)
	}
	sort.Slice(r.Problems, func(i, j int) bool { return r.Problems[i].Path < r.Problems[j].Path })
	return r, nil
}

// nameKeyProblem makes r, the check of the name key file, say why Open
// refused it: a file that reads intact but holds another key, or one of
// the wrong size, is damaged as a name key file.
func nameKeyProblem(r *FsckFile, err error) {
	if r.State == FsckOK || r.State == FsckEmpty || r.State == "" {
		r.State = FsckDamaged
	}
	r.Detail = err.Error()
}

// journalEntries lists the entries of the journal directory e that hold a
// record, without opening the journal (which would lock it and apply its
// records). A slot whose record was cleared is all zeros at its start.
func journalEntries(e cipherEntry) ([]string, error) {
	d, _, err := e.open(unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return nil, fmt.Errorf("volume: fsck: open journal %s: %w", e.rel, err)
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("volume: fsck: read journal %s: %w", e.rel, err)
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	var names []string
	head := make([]byte, 512)
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), "slot-") && de.Type().IsRegular() && idleSlot(cipherEntry{dir: d, name: de.Name()}, head) {
			continue
		}
		names = append(names, de.Name())
	}
	return names, nil
}

// idleSlot reports whether the journal slot file e holds no record.
func idleSlot(e cipherEntry, head []byte) bool {
	f, _, err := e.open(0, unix.S_IFREG)
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

// fsckFile checks the cipher file b, named rel, and with repair clears
// its crash remnants if it is otherwise intact.
func (v *Volume) fsckFile(ctx context.Context, rel string, b *os.File, repair bool, fp *fileProgress, buf []byte) FsckFile {
	r := FsckFile{Path: rel, State: FsckOK}
	f, err := v.Format.Open(ctx, fsckBacking{File: b, rel: rel}, v.Keys)
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
	r.BadSlots = v.badSlots(ctx, b, f.ID())
	if len(r.BadSlots) > 0 {
		r.State, r.Detail = FsckDamaged, fmt.Sprintf("header slot %d fails to authenticate or is another file's", r.BadSlots[0])
	}
	v.fsckBlocks(f, &r, fp, buf)
	if r.State != FsckUnreadable {
		v.fsckRemnants(f, &r, repair)
	}
	if r.State == FsckDamaged && r.Detail == "" {
		r.Detail = fmt.Sprintf("%d blocks fail to authenticate", len(r.Blocks))
		if r.Truncated {
			r.Detail += "; the file was cut short (or its last block changed)"
		}
	}
	return r
}

// badSlots returns the header slots of b that fail to authenticate, or
// that authenticate as the header of another file (a slot copied from
// another file under the same data key). id is the file ID of the slot
// Open chose. Open falls back to the other slot silently, so each slot is
// opened alone: b seen with that slot in both places.
func (v *Volume) badSlots(ctx context.Context, b *os.File, id envelope.FileID) []int {
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
	var ids [2]envelope.FileID
	var opened, reads [2]bool
	for i := range 2 {
		f, err := v.Format.Open(ctx, oneSlot{File: b, slot: raw[i*ss : (i+1)*ss]}, v.Keys)
		if err != nil {
			// The file opened from the other slot, so a failure here,
			// for whatever cause (a stanza changed so that no key takes
			// it, the volume ID changed), is this slot's.
			if ctx.Err() == nil {
				bad = append(bad, i)
			}
			continue
		}
		ids[i], opened[i], reads[i] = f.ID(), true, readsFirstBlock(f, l.BlockSize())
		f.Close()
	}
	if !opened[0] || !opened[1] || ids[0] == ids[1] {
		return bad
	}
	// Two files' headers: the file's own is the one under which its
	// first block opens; failing that, the one Open did not choose is
	// named.
	for i := range 2 {
		if (reads[1-i] && !reads[i]) || (reads[i] == reads[1-i] && ids[i] != id) {
			return append(bad, i)
		}
	}
	return bad
}

// readsFirstBlock reports whether the first block of f authenticates (an
// empty file has none, and counts as read).
func readsFirstBlock(f *envelope.File, bs int) bool {
	n := min(int64(bs), f.Size())
	if n == 0 {
		return true
	}
	buf := make([]byte, n)
	defer clear(buf) // plaintext
	_, err := f.ReadAt(buf, 0)
	return err == nil
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

// fsckBlocks authenticates every block of f, going on past a damaged
// one, reading into buf (a whole number of blocks long).
func (v *Volume) fsckBlocks(f *envelope.File, r *FsckFile, fp *fileProgress, buf []byte) {
	bs := int64(v.Format.Layout().BlockSize())
	size := f.Size()
	// A small file reads into as much of buf as it needs (and a block
	// more), which is all that is left holding its plaintext.
	buf = buf[:min(int64(len(buf)), (size+bs-1)/bs*bs+bs)]
	defer clear(buf) // plaintext
	last := (size - 1) / bs
	var off int64
	// Every pass moves off on or returns. The read at the end, even at
	// off == size, is what finds a fragment too short for a block after
	// the last one: io.EOF says there is none.
	for {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		fp.plain(n)
		if err == io.EOF {
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

package envelope

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultJournalSlots is the number of writes a Journal lets be in flight
// at once when OpenJournal is given 0.
const DefaultJournalSlots = 16

const (
	journalMagic = "KMFJ"
	// Version 1: the record's checksum covers the record and its hint;
	// the body was written before it. Version 2: it also covers the body,
	// record and body written in one go (journalInlineMax).
	journalVersion       = 1
	journalVersionInline = 2
	journalRecLen        = 80
	// A body up to this size is written with its record in one pwrite
	// (a torn body then fails the checksum); a larger one first, so that
	// recovery need not checksum it.
	journalInlineMax = 64 << 10
	// The body of a record starts on the second page of its slot file, so
	// the record itself (written after the body) sits alone on the first
	// page and is written whole or not at all.
	journalBodyOff = 4096
	// A slot whose body was larger than this is emptied after use rather
	// than only cleared, so that idle slots do not hold disk space.
	journalShrinkAbove = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Journal makes each change a File makes to its cipher file atomic with
// respect to a crash of the process. A write covers several pages of the
// cipher file, and when the process is killed the kernel may stop it
// between two pages, leaving a block half old and half new: a torn block,
// which would no longer authenticate.
//
// Before each change, the File records in a journal slot either the bytes
// it is about to write (an overwrite: recovery writes them again) or the
// bytes it is about to replace together with the old size (a change that
// grows the file: recovery puts them back and cuts the file to its old
// size). Once the change is done the slot is cleared. So after a crash
// every block reads its old or its new contents. The records hold only
// ciphertext and offsets, no keys.
//
// OpenJournal keeps the records a crash left behind as pending; each is
// applied when its file is next opened (Volume.Open), before anything
// reads the file, and then removed. The journal does not help against
// power loss: that needs fsync, as without it.
type Journal struct {
	dir  string
	lock *os.File // the journal directory, flock'ed for the life of the Journal
	free chan *journalSlot
	seq  atomic.Uint64

	bufs bufPool // inline records

	mu      sync.Mutex
	pending map[FileID][]journalPending
	closed  bool
}

type journalSlot struct {
	idx int
	f   *os.File
}

type journalPending struct {
	path string
	rec  journalRecord
	body []byte // an inline record's body, read (and checked) at load
}

// journalRecord describes one change: write n bytes of body at offset at,
// then cut the file to cut if cut >= 0. It applies only while the cipher
// file's size is within [min, max]: the sizes the interrupted change can
// have left.
type journalRecord struct {
	seq      uint64
	file     FileID
	at, n    int64
	cut      int64
	min, max int64
	punch    bool   // instead of writing a body, punch a hole of n bytes at at
	hint     string // where the file was, relative to the cipher dir; may be empty or stale
	inline   bool   // version 2: sum covers the body too
	sum      uint32 // the stored checksum
}

// journalMaxHint keeps a record and its hint on the first page of a slot.
const journalMaxHint = journalBodyOff - journalRecLen

// marshal encodes r into b, which has room for journalRecLen+len(r.hint)
// bytes, and returns the encoding; with r.inline its checksum covers body.
func (r *journalRecord) marshal(b, body []byte) []byte {
	b = b[:journalRecLen+len(r.hint)]
	clear(b[:journalRecLen])
	copy(b, journalMagic)
	b[4] = journalVersion
	if r.inline {
		b[4] = journalVersionInline
	}
	if r.punch {
		b[5] = 1
	}
	binary.BigEndian.PutUint64(b[8:], r.seq)
	copy(b[16:32], r.file[:])
	binary.BigEndian.PutUint64(b[32:], uint64(r.at))
	binary.BigEndian.PutUint64(b[40:], uint64(r.n))
	binary.BigEndian.PutUint64(b[48:], uint64(r.cut))
	binary.BigEndian.PutUint64(b[56:], uint64(r.min))
	binary.BigEndian.PutUint64(b[64:], uint64(r.max))
	binary.BigEndian.PutUint16(b[72:], uint16(len(r.hint)))
	copy(b[journalRecLen:], r.hint)
	binary.BigEndian.PutUint32(b[76:], journalChecksum(b, body))
	return b
}

func journalChecksum(b, body []byte) uint32 {
	c := crc32.Update(crc32.Checksum(b[:76], castagnoli), castagnoli, b[journalRecLen:])
	return crc32.Update(c, castagnoli, body)
}

func parseJournalRecord(b []byte) (journalRecord, bool) {
	var r journalRecord
	if len(b) < journalRecLen || string(b[:4]) != journalMagic || (b[4] != journalVersion && b[4] != journalVersionInline) || b[5] > 1 {
		return r, false
	}
	hl := int(binary.BigEndian.Uint16(b[72:]))
	if hl > journalMaxHint || len(b) < journalRecLen+hl {
		return r, false
	}
	b = b[:journalRecLen+hl]
	r.inline = b[4] == journalVersionInline
	r.sum = binary.BigEndian.Uint32(b[76:])
	if !r.inline && r.sum != journalChecksum(b, nil) {
		return r, false
	}
	if r.inline && (b[5] == 1 || binary.BigEndian.Uint64(b[40:]) > journalInlineMax) {
		return r, false // no such record is written
	}
	r.seq = binary.BigEndian.Uint64(b[8:])
	copy(r.file[:], b[16:32])
	r.at = int64(binary.BigEndian.Uint64(b[32:]))
	r.n = int64(binary.BigEndian.Uint64(b[40:]))
	r.cut = int64(binary.BigEndian.Uint64(b[48:]))
	r.min = int64(binary.BigEndian.Uint64(b[56:]))
	r.max = int64(binary.BigEndian.Uint64(b[64:]))
	r.hint = string(b[journalRecLen:])
	r.punch = b[5] == 1
	if r.at < 0 || r.n < 0 || r.min < 0 || r.max < r.min || r.cut < -1 {
		return r, false
	}
	return r, true
}

// JournalHinter is an optional interface of a Backing: the path of the
// file relative to the cipher dir, recorded with each journal record so
// that Journal.RecoverFiles finds the file at mount time.
type JournalHinter interface {
	JournalHint() string
}

// ErrJournalBusy is returned by OpenJournal when another process holds the
// journal: the cipher dir is mounted read-write elsewhere.
var ErrJournalBusy = errors.New("journal is in use by another process (is the cipher dir mounted elsewhere?)")

// OpenJournal opens (creating it if needed) the journal directory dir,
// locks it against other processes, and keeps the records that an earlier
// process left behind as pending. slots is the number of changes that can
// be in flight at once; 0 means DefaultJournalSlots.
func OpenJournal(dir string, slots int) (*Journal, error) {
	if slots <= 0 {
		slots = DefaultJournalSlots
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("envelope: journal: %w", err)
	}
	lock, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("envelope: journal: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("envelope: %s: %w", dir, ErrJournalBusy)
		}
		return nil, fmt.Errorf("envelope: journal: lock %s: %w", dir, err)
	}
	j := &Journal{dir: dir, lock: lock, free: make(chan *journalSlot, slots), pending: map[FileID][]journalPending{}}
	if err := j.load(); err != nil {
		lock.Close()
		return nil, err
	}
	for i := range slots {
		j.free <- &journalSlot{idx: i}
	}
	return j, nil
}

// load turns every record left in the directory into a pending one and
// removes the files that hold none.
func (j *Journal) load() error {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return fmt.Errorf("envelope: journal: %w", err)
	}
	var maxSeq uint64
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(j.dir, name)
		if !e.Type().IsRegular() || !(strings.HasPrefix(name, "slot-") || strings.HasPrefix(name, "pending-")) {
			continue
		}
		rec, body, ok, err := readJournalRecord(p)
		if err != nil {
			return err
		}
		if !ok {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("envelope: journal: %w", err)
			}
			continue
		}
		if strings.HasPrefix(name, "slot-") {
			var rnd [8]byte
			if _, err := rand.Read(rnd[:]); err != nil {
				return fmt.Errorf("envelope: journal: %w", err)
			}
			np := filepath.Join(j.dir, "pending-"+hex.EncodeToString(rnd[:]))
			if err := os.Rename(p, np); err != nil {
				return fmt.Errorf("envelope: journal: %w", err)
			}
			p = np
		}
		j.pending[rec.file] = append(j.pending[rec.file], journalPending{path: p, rec: rec, body: body})
		maxSeq = max(maxSeq, rec.seq)
	}
	j.seq.Store(maxSeq)
	return nil
}

// readJournalRecord reads the record in the slot file at path, and the
// body of an inline record, which its checksum covers.
func readJournalRecord(path string) (rec journalRecord, body []byte, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return rec, nil, false, fmt.Errorf("envelope: journal: %w", err)
	}
	defer f.Close()
	var b [journalBodyOff]byte
	if _, err := f.ReadAt(b[:], 0); err != nil && err != io.EOF {
		return rec, nil, false, fmt.Errorf("envelope: journal: %w", err)
	}
	rec, ok = parseJournalRecord(b[:])
	if ok && rec.inline {
		// A body torn by a kill (written with its record, after it)
		// makes the record invalid: the change it announced had not
		// begun.
		body = make([]byte, rec.n)
		if n, _ := f.ReadAt(body, journalBodyOff); n != len(body) || journalChecksum(b[:journalRecLen+len(rec.hint)], body) != rec.sum {
			return rec, nil, false, nil
		}
	}
	return rec, body, ok, nil
}

// Pending returns the number of records left by an earlier process that
// have not been applied yet.
func (j *Journal) Pending() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, ps := range j.pending {
		n += len(ps)
	}
	return n
}

// Close closes the slot files and releases the lock. Changes must not be
// in flight; the Journal must not be used afterwards.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	for {
		select {
		case s := <-j.free:
			if s.f != nil {
				s.f.Close()
			}
		default:
			return j.lock.Close()
		}
	}
}

// begin records rec with its body in a free slot (waiting for one) and
// returns the slot, to be handed to end once the change is done.
func (j *Journal) begin(rec *journalRecord, body []byte) (*journalSlot, error) {
	s := <-j.free
	if s.f == nil {
		f, err := os.OpenFile(filepath.Join(j.dir, fmt.Sprintf("slot-%d", s.idx)), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			j.free <- s
			return nil, fmt.Errorf("envelope: journal: %w", err)
		}
		s.f = f
	}
	rec.seq = j.seq.Add(1)
	if !rec.punch {
		rec.n = int64(len(body))
	}
	if len(rec.hint) > journalMaxHint {
		rec.hint = ""
	}
	rec.inline = len(body) > 0 && len(body) <= journalInlineMax
	var out []byte // what goes to offset 0: the record, and an inline body
	if rec.inline {
		buf := j.bufs.get(journalBodyOff + len(body))
		defer j.bufs.put(buf)
		out = *buf
		clear(out[:journalBodyOff])
		copy(out[journalBodyOff:], body)
		rec.marshal(out, body)
	} else {
		if len(body) > 0 {
			if _, err := s.f.WriteAt(body, journalBodyOff); err != nil {
				j.free <- s
				return nil, fmt.Errorf("envelope: journal: %w", err)
			}
		}
		buf := j.bufs.get(journalRecLen + len(rec.hint))
		defer j.bufs.put(buf)
		out = rec.marshal(*buf, nil)
	}
	if _, err := s.f.WriteAt(out, 0); err != nil {
		j.end(s, len(body))
		return nil, fmt.Errorf("envelope: journal: %w", err)
	}
	return s, nil
}

// end clears the slot's record and frees the slot.
func (j *Journal) end(s *journalSlot, bodyLen int) error {
	var err error
	if bodyLen > journalShrinkAbove {
		err = s.f.Truncate(0)
	} else {
		var zero [4]byte
		_, err = s.f.WriteAt(zero[:], 0)
	}
	if err != nil {
		// A record that cannot be cleared must not be applied later:
		// try to remove the whole slot file.
		if rerr := os.Remove(s.f.Name()); rerr == nil || errors.Is(rerr, os.ErrNotExist) {
			err = nil
		}
		s.f.Close()
		s.f = nil
	}
	j.free <- s
	if err != nil {
		return fmt.Errorf("envelope: journal: clear record: %w", err)
	}
	return nil
}

// recover applies the pending records of file id to b, oldest first, and
// removes them. A record whose size range does not match b (the file was
// changed or replaced since) is dropped without being applied. It returns
// how many records it handled (applied or dropped) and whether it changed
// b.
func (j *Journal) recover(id FileID, b Backing) (handled int, changed bool, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ps := j.pending[id]
	slices.SortFunc(ps, func(a, b journalPending) int { return cmp.Compare(a.rec.seq, b.rec.seq) })
	for k, p := range ps {
		fi, err := b.Stat()
		if err != nil {
			j.pending[id] = ps[k:]
			return k, changed, fmt.Errorf("envelope: journal: stat: %w", err)
		}
		if size := fi.Size(); size >= p.rec.min && size <= p.rec.max {
			if err := p.replay(b); err != nil {
				j.pending[id] = ps[k:]
				return k, changed, err
			}
			changed = true
		}
		if err := os.Remove(p.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.pending[id] = ps[k+1:]
			return k + 1, changed, fmt.Errorf("envelope: journal: %w", err)
		}
	}
	delete(j.pending, id)
	return len(ps), changed, nil
}

// replay applies a record a crash left: its body (read back from the
// record's file unless load kept it), then made durable.
func (p journalPending) replay(b Backing) error {
	body := p.body
	if body == nil && !p.rec.punch && p.rec.n > 0 {
		f, err := os.Open(p.path)
		if err != nil {
			return fmt.Errorf("envelope: journal: %w", err)
		}
		body = make([]byte, p.rec.n)
		_, err = f.ReadAt(body, journalBodyOff)
		f.Close()
		if err != nil {
			return fmt.Errorf("envelope: journal: read record body: %w", err)
		}
	}
	if err := p.rec.apply(body, b); err != nil {
		return err
	}
	if err := b.Sync(); err != nil {
		return fmt.Errorf("envelope: journal: sync after replay: %w", err)
	}
	return nil
}

// apply carries out record r with its body on b: punch or write, then cut.
func (r *journalRecord) apply(body []byte, b Backing) error {
	if r.punch {
		if err := punch(b, r.at, r.n); err != nil {
			return fmt.Errorf("envelope: journal: replay punch at %d: %w", r.at, err)
		}
	} else if len(body) > 0 {
		if _, err := b.WriteAt(body, r.at); err != nil {
			return fmt.Errorf("envelope: journal: replay write at %d: %w", r.at, err)
		}
	}
	if r.cut >= 0 {
		if err := b.Truncate(r.cut); err != nil {
			return fmt.Errorf("envelope: journal: replay truncate to %d: %w", r.cut, err)
		}
	}
	return nil
}

// punch makes [off, off+n) of b a hole again: deallocated if b can punch
// holes, else written with zeros (an all-zero block reads as a hole too).
func punch(b Backing, off, n int64) error {
	if p, ok := b.(Puncher); ok {
		if err := p.Punch(off, n); err == nil {
			return nil
		}
	} else if fd, ok := b.(interface{ Fd() uintptr }); ok {
		if err := unix.Fallocate(int(fd.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
			return nil
		}
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := b.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// RecoverFiles applies, at mount time, the pending records whose file is
// still where the record says (relative to the cipher dir dir, holding the
// record's file ID in a header slot of layout l). The others stay pending
// until Volume.Open meets their file. It returns the number of records
// applied and the first error; an error leaves the record pending.
func (j *Journal) RecoverFiles(dir string, l Layout) (int, error) {
	j.mu.Lock()
	hints := map[FileID]string{}
	for id, ps := range j.pending {
		for _, p := range ps {
			if p.rec.hint != "" {
				hints[id] = p.rec.hint
			}
		}
	}
	j.mu.Unlock()
	if len(hints) == 0 {
		return 0, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, fmt.Errorf("envelope: journal: %w", err)
	}
	defer root.Close()
	applied := 0
	var firstErr error
	for id, hint := range hints {
		n, err := j.recoverAt(root, hint, id, l)
		applied += n
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("envelope: journal: recover %s: %w", hint, err)
		}
	}
	return applied, firstErr
}

func (j *Journal) recoverAt(root *os.Root, hint string, id FileID, l Layout) (int, error) {
	f, err := root.OpenFile(hint, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, nil // gone or moved: Volume.Open recovers it if it is met
	}
	defer f.Close()
	raw := make([]byte, l.HeaderSize())
	if _, err := f.ReadAt(raw, 0); err != nil {
		return 0, nil
	}
	for k := range 2 {
		if h, err := ParseHeaderSlot(l, raw[k*l.slotSize:(k+1)*l.slotSize]); err == nil && h.File == id {
			n, _, err := j.recover(id, f)
			return n, err
		}
	}
	return 0, nil
}

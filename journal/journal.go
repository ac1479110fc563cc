// Package journal is the write journal of a cipher dir. It implements
// envelope.Journal over a directory of slot files: every change a File
// makes to its cipher file is recorded first, so that a crash of the
// process leaves each block old or new, never torn. What a crash left is
// applied at mount time (RecoverFiles) or when its file is next opened
// (Recover).
package journal

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
)

// DefaultSlots is the number of writes a Journal lets be in flight at once
// when Open is given 0.
const DefaultSlots = 16

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
	// A slot whose body was larger than this is emptied after use (cut to
	// nothing); a smaller one is overwritten with zeros, which costs a
	// copy where the cut costs freeing and allocating the file's blocks
	// again on every change.
	journalShrinkAbove = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Journal is the write journal of a cipher dir: it implements
// envelope.Journal, making each change an envelope.File makes to its cipher
// file atomic with respect to a crash of the process. A write covers
// several pages of the cipher file, and when the process is killed the
// kernel may stop it between two pages, leaving a block half old and half
// new: a torn block, which would no longer authenticate.
//
// Before each change, the File records in a journal slot either the bytes
// it is about to write (an overwrite: recovery writes them again) or the
// bytes it is about to replace together with the old size (a change that
// grows the file: recovery puts them back and cuts the file to its old
// size). Once the change is done the slot is truncated to nothing, so no
// slot keeps the bytes of a finished change. So after a crash every block
// reads its old or its new contents. The records hold only ciphertext and
// offsets, no keys.
//
// The journal directory sits in the cipher dir, which is untrusted
// storage: every entry of it is opened relative to the directory's
// descriptor without following symbolic links, checked to be a regular
// file with no other hard links before it is read, and bounded by its
// size; slot files are created afresh (O_EXCL) so nothing planted is ever
// written through.
//
// Open keeps the records a crash left behind as pending; each is applied
// when its file is next opened (envelope.Volume.Open), before anything
// reads the file, and then removed. The journal does not help against
// power loss: that needs fsync, as without it.
type Journal struct {
	name string   // of the journal directory in the cipher dir, for errors
	dir  *os.File // the journal directory, flock'ed for the life of the Journal
	dfd  int      // dir's descriptor: every slot and record is opened relative to it
	free chan *journalSlot
	seq  atomic.Uint64

	bufs  sync.Pool // *[]byte of journalBodyOff+journalInlineMax bytes: a record with an inline body
	zeros []byte    // what end writes over a record and a body up to journalShrinkAbove

	mu      sync.Mutex
	pending map[envelope.FileID][]journalPending
	dropped []error
	closed  bool
}

var _ envelope.Journal = (*Journal)(nil)

// journalSlot is a slot file; while a change is in flight it is the
// change's envelope.JournalEntry.
type journalSlot struct {
	j       *Journal
	idx     int
	f       *os.File
	bodyLen int // of the change in flight
}

func (s *journalSlot) name() string { return fmt.Sprintf("slot-%d", s.idx) }

type journalPending struct {
	name     string // in the journal directory
	dev, ino uint64 // of the record's file when load read it
	rec      journalRecord
	body     []byte // an inline record's body, read (and checked) at load
}

// journalRecord is one change (envelope.Change: write N bytes of body at
// At, or punch them; then cut to Cut if Cut >= 0; only while the cipher
// file's size is within [Min, Max]) as a slot stores it.
type journalRecord struct {
	envelope.Change
	seq    uint64
	inline bool   // version 2: sum covers the body too
	sum    uint32 // the stored checksum
}

// journalMaxHint keeps a record and its hint on the first page of a slot.
const journalMaxHint = journalBodyOff - journalRecLen

// marshal encodes r into b, which has room for journalRecLen+len(r.Hint)
// bytes, and returns the encoding; with r.inline its checksum covers body.
func (r *journalRecord) marshal(b, body []byte) []byte {
	b = b[:journalRecLen+len(r.Hint)]
	clear(b[:journalRecLen])
	copy(b, journalMagic)
	b[4] = journalVersion
	if r.inline {
		b[4] = journalVersionInline
	}
	if r.Punch {
		b[5] = 1
	}
	binary.BigEndian.PutUint64(b[8:], r.seq)
	copy(b[16:32], r.File[:])
	binary.BigEndian.PutUint64(b[32:], uint64(r.At))
	binary.BigEndian.PutUint64(b[40:], uint64(r.N))
	binary.BigEndian.PutUint64(b[48:], uint64(r.Cut))
	binary.BigEndian.PutUint64(b[56:], uint64(r.Min))
	binary.BigEndian.PutUint64(b[64:], uint64(r.Max))
	binary.BigEndian.PutUint16(b[72:], uint16(len(r.Hint)))
	copy(b[journalRecLen:], r.Hint)
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
	copy(r.File[:], b[16:32])
	r.At = int64(binary.BigEndian.Uint64(b[32:]))
	r.N = int64(binary.BigEndian.Uint64(b[40:]))
	r.Cut = int64(binary.BigEndian.Uint64(b[48:]))
	r.Min = int64(binary.BigEndian.Uint64(b[56:]))
	r.Max = int64(binary.BigEndian.Uint64(b[64:]))
	r.Hint = string(b[journalRecLen:])
	r.Punch = b[5] == 1
	if r.At < 0 || r.N < 0 || r.Min < 0 || r.Max < r.Min || r.Cut < -1 {
		return r, false
	}
	if r.Punch && r.N > r.Max-r.At {
		return r, false // a punch record covers stored bytes only
	}
	return r, true
}

// ErrBusy is returned by Open when another process holds the journal: the
// cipher dir is mounted read-write elsewhere.
var ErrBusy = errors.New("journal is in use by another process (is the cipher dir mounted elsewhere?)")

// Open opens the journal directory name (one path component) of
// the cipher dir, creating it if needed, locks it against other processes,
// and keeps the records that an earlier process left behind as pending.
// slots is the number of changes that can be in flight at once; 0 means
// DefaultSlots.
//
// The journal directory must be a directory, not a symbolic link to one:
// anything else there fails with an error wrapping ErrEntry. An
// entry among the records that is not a regular file of its own, or a
// record whose lengths exceed its file, is removed without being followed
// or read; Dropped reports it. The caller keeps ownership of cipherDir,
// which the Journal does not use after Open returns.
func Open(cipherDir *os.Root, name string, slots int) (*Journal, error) {
	if slots <= 0 {
		slots = DefaultSlots
	}
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return nil, fmt.Errorf("journal: %q is not a name in the cipher dir", name)
	}
	top, err := cipherDir.Open(".")
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer top.Close()
	if err := unix.Mkdirat(int(top.Fd()), name, 0o700); err != nil && err != unix.EEXIST {
		return nil, fmt.Errorf("journal: create %s: %w", name, err)
	}
	fd, _, err := openAt(int(top.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return nil, fmt.Errorf("journal: %s: %w", name, err)
	}
	dir := os.NewFile(uintptr(fd), name)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		dir.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("journal: %s: %w", name, ErrBusy)
		}
		return nil, fmt.Errorf("journal: lock %s: %w", name, err)
	}
	j := &Journal{name: name, dir: dir, dfd: fd, zeros: make([]byte, journalBodyOff+journalShrinkAbove), free: make(chan *journalSlot, slots), pending: map[envelope.FileID][]journalPending{}}
	j.bufs.New = func() any {
		b := make([]byte, journalBodyOff+journalInlineMax)
		return &b
	}
	if err := j.load(); err != nil {
		dir.Close()
		return nil, err
	}
	for i := range slots {
		j.free <- &journalSlot{j: j, idx: i}
	}
	return j, nil
}

// Dropped returns the entries Open found among the records and
// removed unread, one error (wrapping ErrEntry) each, naming the
// entry and the cause, for the caller to log. Cleared records and records
// whose write a kill cut short are removed too, but are not reported.
func (j *Journal) Dropped() []error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.dropped)
}

// load turns every record left in the directory into a pending one and
// removes the files that hold none.
func (j *Journal) load() error {
	ents, err := j.dir.ReadDir(-1)
	if err != nil {
		return fmt.Errorf("journal: %s: %w", j.name, err)
	}
	var maxSeq uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "slot-") && !strings.HasPrefix(name, "pending-") {
			continue
		}
		p, err := j.readRecord(name)
		if errors.Is(err, unix.ENOENT) {
			continue // gone since the listing
		}
		if err != nil {
			if !errors.Is(err, errNoRecord) && !errors.Is(err, ErrEntry) {
				return fmt.Errorf("journal: %s/%s: %w", j.name, name, err)
			}
			if rerr := removeAt(j.dfd, name); rerr != nil {
				return fmt.Errorf("journal: %s/%s: remove: %w (%w)", j.name, name, rerr, err)
			}
			if errors.Is(err, ErrEntry) {
				j.dropped = append(j.dropped, fmt.Errorf("journal: %s/%s: removed: %w", j.name, name, err))
			}
			continue
		}
		if strings.HasPrefix(name, "slot-") {
			var rnd [8]byte
			if _, err := rand.Read(rnd[:]); err != nil {
				return fmt.Errorf("journal: %w", err)
			}
			np := "pending-" + hex.EncodeToString(rnd[:])
			if err := unix.Renameat(j.dfd, name, j.dfd, np); err != nil {
				return fmt.Errorf("journal: %s/%s: %w", j.name, name, err)
			}
			p.name = np
		}
		j.pending[p.rec.File] = append(j.pending[p.rec.File], p)
		maxSeq = max(maxSeq, p.rec.seq)
	}
	j.seq.Store(maxSeq)
	return nil
}

// openRecord opens the record file name of the journal directory for
// reading: a regular file with no other name (a hard link could be a cipher
// file or, on the same file system, any file of the host), and checks that
// it holds the n body bytes rec announces, if rec is given.
func (j *Journal) openRecord(name string, rec *journalRecord) (*os.File, unix.Stat_t, error) {
	fd, st, err := openAt(j.dfd, name, unix.O_RDONLY, unix.S_IFREG)
	if err != nil {
		return nil, st, err
	}
	if st.Nlink != 1 {
		unix.Close(fd)
		return nil, st, fmt.Errorf("has %d links: %w", st.Nlink, ErrEntry)
	}
	if rec != nil {
		if err := rec.fits(st.Size); err != nil {
			unix.Close(fd)
			return nil, st, err
		}
	}
	return os.NewFile(uintptr(fd), name), st, nil
}

// fits checks that a record file of size bytes holds r's body. An inline
// body cut short is a write a kill interrupted before the change began;
// a larger one is written before its record, so a record whose body is
// missing was not written by the journal.
func (r *journalRecord) fits(size int64) error {
	if r.Punch || r.N <= max(0, size-journalBodyOff) {
		return nil
	}
	if r.inline {
		return errNoRecord
	}
	return fmt.Errorf("record announces %d body bytes, its file holds %d: %w", r.N, max(0, size-journalBodyOff), ErrEntry)
}

// readRecord reads the record in the slot or record file name, and the
// body of an inline record, which its checksum covers.
func (j *Journal) readRecord(name string) (journalPending, error) {
	f, st, err := j.openRecord(name, nil)
	if err != nil {
		return journalPending{}, err
	}
	defer f.Close()
	var b [journalBodyOff]byte
	n, err := f.ReadAt(b[:], 0)
	if err != nil && err != io.EOF {
		return journalPending{}, err
	}
	rec, ok := parseJournalRecord(b[:n])
	if !ok {
		return journalPending{}, errNoRecord
	}
	if err := rec.fits(st.Size); err != nil {
		return journalPending{}, err
	}
	p := journalPending{name: name, dev: uint64(st.Dev), ino: st.Ino, rec: rec}
	if rec.inline {
		// A body torn by a kill (written with its record, after it)
		// makes the record invalid: the change it announced had not
		// begun.
		p.body = make([]byte, rec.N)
		if n, _ := f.ReadAt(p.body, journalBodyOff); n != len(p.body) || journalChecksum(b[:journalRecLen+len(rec.Hint)], p.body) != rec.sum {
			return journalPending{}, errNoRecord
		}
	}
	return p, nil
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
			return j.dir.Close()
		}
	}
}

// createSlot creates the file of slot s afresh: whatever is at its name
// (a symbolic link, a hard link to a cipher file, a FIFO planted since
// load) is unlinked, never opened, and O_EXCL refuses anything planted
// again in between.
func (j *Journal) createSlot(s *journalSlot) error {
	name := s.name()
	for range 3 {
		if err := removeAt(j.dfd, name); err != nil {
			return fmt.Errorf("journal: %s/%s: remove: %w", j.name, name, err)
		}
		fd, err := unix.Openat(j.dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == nil {
			s.f = os.NewFile(uintptr(fd), name)
			return nil
		}
		if err != unix.EEXIST {
			return fmt.Errorf("journal: %s/%s: %w", j.name, name, err)
		}
	}
	return fmt.Errorf("journal: %s/%s: something keeps being created there: %w", j.name, name, ErrEntry)
}

// Begin records change c with its body in a free slot, waiting for one,
// and returns the slot as the change's entry (see envelope.Journal).
func (j *Journal) Begin(c envelope.Change, body []byte) (envelope.JournalEntry, error) {
	rec := journalRecord{Change: c}
	s, err := j.begin(&rec, body)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// End clears the slot's record and frees the slot (see end).
func (s *journalSlot) End() error { return s.j.end(s, s.bodyLen) }

// begin records rec with its body in a free slot (waiting for one) and
// returns the slot, to be handed to end once the change is done.
func (j *Journal) begin(rec *journalRecord, body []byte) (*journalSlot, error) {
	s := <-j.free
	if s.f == nil {
		if err := j.createSlot(s); err != nil {
			j.free <- s
			return nil, err
		}
	}
	s.bodyLen = len(body)
	rec.seq = j.seq.Add(1)
	if !rec.Punch {
		rec.N = int64(len(body))
	}
	if len(rec.Hint) > journalMaxHint {
		rec.Hint = ""
	}
	rec.inline = len(body) > 0 && len(body) <= journalInlineMax
	var out []byte // what goes to offset 0: the record, and an inline body
	if rec.inline {
		buf := j.bufs.Get().(*[]byte)
		defer j.bufs.Put(buf)
		out = (*buf)[:journalBodyOff+len(body)]
		clear(out[:journalBodyOff])
		copy(out[journalBodyOff:], body)
		rec.marshal(out, body)
	} else {
		if len(body) > 0 {
			if _, err := s.f.WriteAt(body, journalBodyOff); err != nil {
				j.free <- s
				return nil, fmt.Errorf("journal: %w", err)
			}
		}
		buf := j.bufs.Get().(*[]byte)
		defer j.bufs.Put(buf)
		out = rec.marshal(*buf, nil)
	}
	if _, err := s.f.WriteAt(out, 0); err != nil {
		j.end(s, len(body))
		return nil, fmt.Errorf("journal: %w", err)
	}
	return s, nil
}

// end clears the slot's record and body and frees the slot. The body is
// wiped too, not only the record: a body left behind would keep the sealed
// bytes of a finished change (a file's old last block, say), enough to put
// that file back to an older state undetected. The record and its body
// are overwritten with zeros in one pwrite from offset 0, so the record
// goes first; a body over journalShrinkAbove is cut off with the whole
// file instead, so that idle slots hold no space.
func (j *Journal) end(s *journalSlot, bodyLen int) error {
	var err error
	if bodyLen <= journalShrinkAbove {
		_, err = s.f.WriteAt(j.zeros[:journalBodyOff+bodyLen], 0)
	} else {
		err = s.f.Truncate(0)
	}
	if err != nil {
		// A record that cannot be cleared must not be applied later:
		// try to remove the whole slot file.
		if rerr := removeAt(j.dfd, s.name()); rerr == nil {
			err = nil
		}
		s.f.Close()
		s.f = nil
	}
	j.free <- s
	if err != nil {
		return fmt.Errorf("journal: clear record: %w", err)
	}
	return nil
}

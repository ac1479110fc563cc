package journal

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
)

// Recover applies the records a crash left for file id to b, before
// anything reads it (see envelope.Journal), and reports whether it changed
// b.
func (j *Journal) Recover(id envelope.FileID, b envelope.Backing) (bool, error) {
	_, changed, err := j.recover(id, b)
	return changed, err
}

// recover applies the pending records of file id to b, oldest first, and
// removes them. A record whose size range does not match b (the file was
// changed or replaced since) is dropped without being applied. It returns
// how many records it handled (applied or dropped) and whether it changed
// b.
func (j *Journal) recover(id envelope.FileID, b envelope.Backing) (handled int, changed bool, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ps := j.pending[id]
	slices.SortFunc(ps, func(a, b journalPending) int { return cmp.Compare(a.rec.seq, b.rec.seq) })
	for k, p := range ps {
		fi, err := b.Stat()
		if err != nil {
			j.pending[id] = ps[k:]
			return k, changed, fmt.Errorf("journal: stat: %w", err)
		}
		if size := fi.Size(); size >= p.rec.Min && size <= p.rec.Max {
			switch err := j.replay(p, b); {
			case errors.Is(err, ErrEntry):
				// Replaced since load: not the journal's record any more.
				// It is removed below, unapplied, like a stale one.
				j.dropped = append(j.dropped, err)
			case err != nil:
				j.pending[id] = ps[k:]
				return k, changed, err
			default:
				changed = true
			}
		}
		if err := removeAt(j.dfd, p.name); err != nil {
			j.pending[id] = ps[k+1:]
			return k + 1, changed, fmt.Errorf("journal: %s/%s: %w", j.name, p.name, err)
		}
	}
	delete(j.pending, id)
	return len(ps), changed, nil
}

// replay applies a record a crash left: its body (read back from the
// record's file unless load kept it), then made durable. The record's file
// is opened again under the rules load applied, and must be the one load
// read: one swapped in since is not read.
func (j *Journal) replay(p journalPending, b envelope.Backing) error {
	body := p.body
	if body == nil && !p.rec.Punch && p.rec.N > 0 {
		f, st, err := j.openRecord(p.name, &p.rec)
		if err == nil && (uint64(st.Dev) != p.dev || st.Ino != p.ino) {
			f.Close()
			err = fmt.Errorf("replaced since the journal was opened: %w", ErrEntry)
		}
		if err != nil {
			return fmt.Errorf("journal: %s/%s: %w", j.name, p.name, err)
		}
		body = make([]byte, p.rec.N)
		_, err = f.ReadAt(body, journalBodyOff)
		f.Close()
		if err != nil {
			return fmt.Errorf("journal: %s/%s: read record body: %w", j.name, p.name, err)
		}
	}
	if err := p.rec.Apply(body, fdPuncher(b)); err != nil {
		return err
	}
	if err := b.Sync(); err != nil {
		return fmt.Errorf("journal: sync after replay: %w", err)
	}
	return nil
}

// fdPuncher returns b able to punch holes (envelope.Puncher) if it is a
// file descriptor that cannot yet, as an *os.File opened by RecoverFiles.
func fdPuncher(b envelope.Backing) envelope.Backing {
	if _, ok := b.(envelope.Puncher); ok {
		return b
	}
	if fd, ok := b.(interface{ Fd() uintptr }); ok {
		return punchingFile{b, fd.Fd()}
	}
	return b
}

// punchingFile is a Backing over descriptor fd that punches holes with
// fallocate.
type punchingFile struct {
	envelope.Backing
	fd uintptr
}

// Punch deallocates [off, off+n), which then reads as zeros.
func (p punchingFile) Punch(off, n int64) error {
	return unix.Fallocate(int(p.fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// RecoverFiles applies, at mount time, the pending records whose file is
// still where the record says (relative to the cipher dir, holding the
// record's file ID in a header slot of layout l). The path is walked from
// cipherDir one component at a time without following symbolic links, and
// only a regular file is opened; anything else there is left alone. The
// others stay pending until envelope.Volume.Open meets their file. It returns the
// number of records applied and the first error; an error leaves the
// record pending. The caller keeps ownership of cipherDir.
func (j *Journal) RecoverFiles(cipherDir *os.Root, l envelope.Layout) (int, error) {
	j.mu.Lock()
	hints := map[envelope.FileID]string{}
	for id, ps := range j.pending {
		for _, p := range ps {
			if p.rec.Hint != "" {
				hints[id] = p.rec.Hint
			}
		}
	}
	j.mu.Unlock()
	if len(hints) == 0 {
		return 0, nil
	}
	top, err := cipherDir.Open(".")
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	defer top.Close()
	applied := 0
	var firstErr error
	for id, hint := range hints {
		n, err := j.recoverAt(int(top.Fd()), hint, id, l)
		applied += n
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("journal: recover %s: %w", hint, err)
		}
	}
	return applied, firstErr
}

func (j *Journal) recoverAt(dirfd int, hint string, id envelope.FileID, l envelope.Layout) (int, error) {
	f, err := openBeneath(dirfd, hint, unix.O_RDWR)
	if errors.Is(err, ErrEntry) {
		return 0, err // left alone, and the record pending
	}
	if err != nil {
		return 0, nil // gone or moved: envelope.Volume.Open recovers it if it is met
	}
	defer f.Close()
	raw := make([]byte, l.HeaderSize())
	if _, err := f.ReadAt(raw, 0); err != nil {
		return 0, nil
	}
	for k := range 2 {
		if h, err := envelope.ParseHeaderSlot(l, raw[k*l.SlotSize():(k+1)*l.SlotSize()]); err == nil && h.File == id {
			n, _, err := j.recover(id, f)
			return n, err
		}
	}
	return 0, nil
}

package envelope_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
)

// stopAt is a backing on which the process dies at its stop-th change (a
// write or a truncate, counted from 1): that change and every later one
// fail without touching the file. With stop 0 it only counts.
type stopAt struct {
	*memfile.File
	stop, changes int
}

var errStopped = errors.New("stopped")

func (s *stopAt) change() bool {
	s.changes++
	return s.stop == 0 || s.changes < s.stop
}

func (s *stopAt) WriteAt(p []byte, off int64) (int, error) {
	if !s.change() {
		return 0, errStopped
	}
	return s.File.WriteAt(p, off)
}

func (s *stopAt) Truncate(n int64) error {
	if !s.change() {
		return errStopped
	}
	return s.File.Truncate(n)
}

// TestRemnantsCleared makes real crash remnants: a truncate to a block
// boundary, and a write past a gap, each stopped before its last change
// (the cut; the clearing of the old last block's mark). The file still
// reads as before the change; Remnants names the block once a read has
// opened it, ClearRemnants reseals it, and afterwards the file reads the
// same, reopened, with no remnant left.
func TestRemnantsCleared(t *testing.T) {
	const bs = 4096
	for _, tc := range []struct {
		name   string
		size   int
		change func(f *envelope.File) error
		// want is the file's plaintext after the crash: the change undone
		// (truncate) or done (write; only the mark is left behind).
		want func(plain []byte) []byte
		// remnants are the blocks the crash leaves sealed marked last.
		remnants []int64
	}{
		{"truncate,size=4B+100,to=2B", 4*bs + 100, func(f *envelope.File) error { return f.Truncate(2 * bs) },
			func(p []byte) []byte { return p }, []int64{1}},
		{"truncate,size=3B,to=B", 3 * bs, func(f *envelope.File) error { return f.Truncate(bs) },
			func(p []byte) []byte { return p }, []int64{0}},
		{"write-past-gap,size=B+100,at=5B", bs + 100, func(f *envelope.File) error {
			_, err := f.WriteAt(fill(10, 77), 5*bs)
			return err
		}, func(p []byte) []byte {
			out := make([]byte, 5*bs+10)
			copy(out, p)
			copy(out[5*bs:], fill(10, 77))
			return out
		}, []int64{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVolume(t, bs)
			plain := fill(tc.size, 5)
			f, b := newFile(t, v, dataKey(3))
			if _, err := f.WriteAt(plain, 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			before := b.Bytes()
			// A dry run counts the change's steps; the crash is the last.
			dry := &stopAt{File: memfile.New(before)}
			if err := tc.change(reopen(t, v, dry)); err != nil {
				t.Fatalf("change without a crash: %v", err)
			}
			crash := &stopAt{File: memfile.New(before), stop: dry.changes}
			if err := tc.change(reopen(t, v, crash)); !errors.Is(err, errStopped) {
				t.Fatalf("change stopped at step %d: %v, want the stop", dry.changes, err)
			}
			crashed := crash.Bytes()
			want := tc.want(plain)

			g := reopen(t, v, memfile.New(crashed))
			if r, err := g.Remnants(); err != nil || len(r) != 0 {
				t.Fatalf("remnants before any read: %v, %v; want none noted", r, err)
			}
			readAll(t, g, want)
			r, err := g.Remnants()
			if err != nil || !slices.Equal(r, tc.remnants) {
				t.Fatalf("remnants after reading: %v, %v; want %v", r, err, tc.remnants)
			}

			m := memfile.New(crashed)
			g = reopen(t, v, m)
			readAll(t, g, want)
			n, err := g.ClearRemnants()
			if err != nil || n != len(tc.remnants) {
				t.Fatalf("ClearRemnants = %d, %v; want %d", n, err, len(tc.remnants))
			}
			readAll(t, g, want)
			if r, err := g.Remnants(); err != nil || len(r) != 0 {
				t.Fatalf("remnants after clearing: %v, %v", r, err)
			}
			if err := g.Close(); err != nil {
				t.Fatal(err)
			}
			h := reopen(t, v, m)
			readAll(t, h, want)
			if r, err := h.Remnants(); err != nil || len(r) != 0 {
				t.Fatalf("remnants after clearing, reopened: %v, %v", r, err)
			}
			if n, err := h.ClearRemnants(); err != nil || n != 0 {
				t.Fatalf("ClearRemnants again = %d, %v; want 0", n, err)
			}
		})
	}
}

// TestRemnantsStale: a noted remnant that a later change replaced (a
// write over the block) or made the file's last block (a truncate) is no
// longer reported, and ClearRemnants leaves it alone.
func TestRemnantsStale(t *testing.T) {
	const bs = 4096
	for _, tc := range []struct {
		name   string
		change func(f *envelope.File) error
	}{
		{"overwritten", func(f *envelope.File) error { _, err := f.WriteAt(fill(bs, 9), bs); return err }},
		{"now-last", func(f *envelope.File) error { return f.Truncate(2 * bs) }},
	} {
		t.Run(fmt.Sprintf("change=%s", tc.name), func(t *testing.T) {
			v := newVolume(t, bs)
			f, b := newFile(t, v, dataKey(3))
			if _, err := f.WriteAt(fill(4*bs, 5), 0); err != nil {
				t.Fatal(err)
			}
			crash := &stopAt{File: memfile.New(b.Bytes()), stop: 2}
			if err := reopen(t, v, crash).Truncate(2 * bs); !errors.Is(err, errStopped) {
				t.Fatalf("truncate: %v, want the stop", err)
			}
			g := reopen(t, v, memfile.New(crash.Bytes()))
			readAll(t, g, fill(4*bs, 5))
			if r, err := g.Remnants(); err != nil || !slices.Equal(r, []int64{1}) {
				t.Fatalf("remnants: %v, %v; want [1]", r, err)
			}
			if err := tc.change(g); err != nil {
				t.Fatal(err)
			}
			if r, err := g.Remnants(); err != nil || len(r) != 0 {
				t.Fatalf("remnants after the change: %v, %v; want none", r, err)
			}
			if n, err := g.ClearRemnants(); err != nil || n != 0 {
				t.Fatalf("ClearRemnants = %d, %v; want 0", n, err)
			}
		})
	}
}

// memJournal is a journal in memory for one process life: a record that
// the change's End has not cleared when the process dies (dead) stays,
// and the next Open's Recover carries it out if the file's size allows.
type memJournal struct {
	dead    *bool
	records []memRecord
}

type memRecord struct {
	c     envelope.Change
	body  []byte
	ended bool
}

type memEntry struct {
	j *memJournal
	i int
}

func (j *memJournal) Begin(c envelope.Change, body []byte) (envelope.JournalEntry, error) {
	j.records = append(j.records, memRecord{c: c, body: slices.Clone(body)})
	return memEntry{j: j, i: len(j.records) - 1}, nil
}

func (e memEntry) End() error {
	if !*e.j.dead {
		e.j.records[e.i].ended = true
	}
	return nil
}

func (j *memJournal) Recover(id envelope.FileID, b envelope.Backing) (bool, error) {
	changed := false
	for i := range j.records {
		r := &j.records[i]
		if r.ended || r.c.File != id {
			continue
		}
		fi, err := b.Stat()
		if err != nil {
			return changed, err
		}
		if fi.Size() >= r.c.Min && fi.Size() <= r.c.Max {
			if err := r.c.Apply(r.body, b); err != nil {
				return changed, err
			}
			changed = true
		}
		r.ended = true
	}
	return changed, nil
}

// dieAfter lets limit bytes be written, then the process dies: the write
// stops there and nothing more reaches the file.
type dieAfter struct {
	*memfile.File
	limit, written int
	dead           *bool
}

func (d *dieAfter) WriteAt(p []byte, off int64) (int, error) {
	if *d.dead {
		return 0, errStopped
	}
	n := min(len(p), max(0, d.limit-d.written))
	d.written += n
	d.File.WriteAt(p[:n], off)
	if n < len(p) {
		*d.dead = true
		return n, errStopped
	}
	return n, nil
}

// TestClearRemnantsCrash stops ClearRemnants, on a volume with a journal,
// after every number of bytes of its block write: the next Open recovers
// the file from the journal, which then reads the same plaintext, the
// remnant resealed or still there, never a torn block.
func TestClearRemnantsCrash(t *testing.T) {
	const bs = 4096
	plain := fill(4*bs+100, 5)
	var crashed []byte
	{
		v := newVolume(t, bs)
		f, b := newFile(t, v, dataKey(3))
		if _, err := f.WriteAt(plain, 0); err != nil {
			t.Fatal(err)
		}
		crash := &stopAt{File: memfile.New(b.Bytes()), stop: 2}
		if err := reopen(t, v, crash).Truncate(2 * bs); !errors.Is(err, errStopped) {
			t.Fatalf("truncate: %v, want the stop", err)
		}
		crashed = crash.Bytes()
	}
	sealed := bs + envelope.BlockOverhead
	for limit := 0; limit <= sealed; limit += 97 {
		t.Run(fmt.Sprintf("written=%d", limit), func(t *testing.T) {
			dead := false
			j := &memJournal{dead: &dead}
			v := newVolume(t, bs, func(o *envelope.Options) { o.Journal = j })
			m := &dieAfter{File: memfile.New(crashed), limit: limit, dead: &dead}
			g := reopen(t, v, m)
			readAll(t, g, plain)
			n, err := g.ClearRemnants()
			if limit < sealed && err == nil {
				t.Fatalf("ClearRemnants = %d, nil: the crash went unnoticed", n)
			}
			h := reopen(t, v, memfile.New(m.Bytes()))
			readAll(t, h, plain)
			r, err := h.Remnants()
			if err != nil || len(r) > 1 {
				t.Fatalf("remnants after the crash: %v, %v", r, err)
			}
		})
	}
}

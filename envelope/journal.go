package envelope

import "fmt"

// Journal makes each change a File makes to its cipher file atomic with
// respect to a crash of the process. A write covers several pages of the
// cipher file, and when the process is killed the kernel may stop it
// between two pages, leaving a block half old and half new: a torn block,
// which would no longer authenticate.
//
// Before such a change the File describes it to Begin: either the bytes it
// is about to write (an overwrite: recovery writes them again) or the
// bytes it is about to replace with the old size (a change that grows the
// file: recovery puts them back and cuts the file to its old size). Once
// the change is done the File ends the entry. Open calls Recover before
// anything reads a file, so after a crash every block reads its old or its
// new contents.
//
// Package journal implements it over a directory of the cipher dir. The
// envelope declares it so that the format does not depend on how or where
// records are kept. Implementations are safe for concurrent use by the
// Files of a Volume.
type Journal interface {
	// Begin records change c with body (the bytes Apply writes; nil for
	// a punch or a cut alone) before the File makes it, waiting for room
	// if needed. body stays the caller's. The returned entry is ended once
	// the change is done, or undone with Apply after a failure.
	Begin(c Change, body []byte) (JournalEntry, error)
	// Recover finishes or undoes on b the changes to file id that a crash
	// interrupted, and reports whether it changed b.
	Recover(id FileID, b Backing) (changed bool, err error)
}

// JournalEntry is a change that Journal.Begin recorded.
type JournalEntry interface {
	// End clears the record: after it, a crash leaves nothing of this
	// change to recover, and no copy of its bytes.
	End() error
}

// JournalHinter is an optional interface of a Backing: the path of the
// file relative to the cipher dir, recorded with each journal record so
// that a journal can find the file at mount time (Change.Hint).
type JournalHinter interface {
	JournalHint() string
}

// Change is one change to a cipher file, as a journal records it: write
// the body at At, or with Punch make the N bytes at At a hole again; then,
// if Cut >= 0, cut the file to Cut bytes. It applies only while the file's
// size is within [Min, Max]: the sizes the interrupted change can have
// left.
type Change struct {
	File     FileID
	At       int64
	N        int64 // the length of a punch; a write's is its body's
	Cut      int64
	Min, Max int64
	Punch    bool
	Hint     string // where the file is, relative to the cipher dir; may be empty or stale
}

// Apply carries out c with body on b: punch or write, then cut. A journal
// replays a record with it; a File undoes a failed change with it.
func (c *Change) Apply(body []byte, b Backing) error {
	if c.Punch {
		if err := punch(b, c.At, c.N); err != nil {
			return fmt.Errorf("envelope: apply change: punch at %d: %w", c.At, err)
		}
	} else if len(body) > 0 {
		if _, err := b.WriteAt(body, c.At); err != nil {
			return fmt.Errorf("envelope: apply change: write at %d: %w", c.At, err)
		}
	}
	if c.Cut >= 0 {
		if err := b.Truncate(c.Cut); err != nil {
			return fmt.Errorf("envelope: apply change: truncate to %d: %w", c.Cut, err)
		}
	}
	return nil
}

// punch makes [off, off+n) of b a hole again: deallocated if b can punch
// holes (Puncher), else written with zeros (an all-zero block reads as a
// hole too).
func punch(b Backing, off, n int64) error {
	if p, ok := b.(Puncher); ok {
		if err := p.Punch(off, n); err == nil {
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

package volume

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// FsckProgress is how far a check has got. Bytes are of cipher files, as
// the cipher dir stores them; the totals come from a first pass over the
// directory tree that reads no file.
type FsckProgress struct {
	Files, TotalFiles int64
	Bytes, TotalBytes int64
}

// fsckProgress counts what the check's workers have done and tells the
// caller's callback, one call at a time. A nil *fsckProgress counts
// nothing.
type fsckProgress struct {
	mu  sync.Mutex
	p   FsckProgress
	fn  func(FsckProgress)
	per int // sealed bytes per plaintext block (Layout.SealedLen of one)
	bs  int
}

// newFsckProgress sums the regular files of the cipher dir (as the check
// will walk it: the journal and anything behind a link left out) and
// returns the counter that reports to fn; nil if fn is nil.
func (v *Volume) newFsckProgress(ctx context.Context, fn func(FsckProgress)) (*fsckProgress, error) {
	if fn == nil {
		return nil, nil
	}
	l := v.Format.Layout()
	pr := &fsckProgress{fn: fn, bs: l.BlockSize(), per: int(l.SealedBlockSize())}
	err := cipherWalk{
		visit: func(e cipherEntry) (bool, error) {
			switch {
			case e.rel == JournalName && e.typ.IsDir():
				return false, nil
			case e.typ.IsDir():
				return true, nil
			case e.volumeFile(v.encNames):
				var st unix.Stat_t
				if unix.Fstatat(int(e.dir.Fd()), e.name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
					pr.p.TotalFiles++
					pr.p.TotalBytes += st.Size
				}
			}
			return false, nil
		},
		// A directory that does not open now fails the check proper,
		// which says so; the totals only leave it out.
		dirErr: func(string, error) error { return nil },
	}.run(ctx, v.Dir)
	if err != nil {
		return nil, fmt.Errorf("volume: fsck %s: %w", v.Dir, err)
	}
	fn(pr.p)
	return pr, nil
}

// add counts files and bytes done and reports the totals.
func (pr *fsckProgress) add(files, bytes int64) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.p.Files += files
	pr.p.Bytes += bytes
	// The first pass may have missed a file created since: the totals
	// never fall behind what is done.
	pr.p.TotalFiles = max(pr.p.TotalFiles, pr.p.Files)
	pr.p.TotalBytes = max(pr.p.TotalBytes, pr.p.Bytes)
	pr.fn(pr.p)
}

// file returns the counter of one file's check.
func (pr *fsckProgress) file() *fileProgress { return &fileProgress{pr: pr} }

// fileProgress counts the bytes of one file as its blocks are checked,
// so a large file moves the count before it is done.
type fileProgress struct {
	pr   *fsckProgress
	seen int64 // cipher bytes counted so far
}

// plain counts n plaintext bytes checked, from a block boundary on.
func (fp *fileProgress) plain(n int) {
	if fp.pr == nil || n <= 0 {
		return
	}
	bs := fp.pr.bs
	sealed := int64(n/bs)*int64(fp.pr.per) + int64(n%bs)
	if n%bs != 0 {
		sealed += int64(fp.pr.per - bs)
	}
	fp.seen += sealed
	fp.pr.add(0, sealed)
}

// done counts the file, whose cipher file holds size bytes, as checked:
// what its blocks did not count (the header, blocks skipped) is added.
func (fp *fileProgress) done(size int64) {
	if fp.pr == nil {
		return
	}
	fp.pr.add(1, size-fp.seen)
}

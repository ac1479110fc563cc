package fs

import (
	"io"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fdFile is a cipher file's descriptor with the methods envelope.Backing
// needs. It is os.File without what kmsfs has no use for here: the
// poller registration, the fcntl that os.NewFile makes, and the cleanup
// that closes a lost descriptor (an openFile always closes its own);
// together they were a seventh of the time an open spent in the daemon.
type fdFile struct {
	fd   int
	name string
	// opened is the stat taken right after the open, if any: the first
	// Stat (envelope.Volume.Open's, which follows) returns it instead of
	// asking again.
	opened *unix.Stat_t
}

func (f *fdFile) Fd() uintptr  { return uintptr(f.fd) }
func (f *fdFile) Name() string { return f.name }
func (f *fdFile) Close() error { return unix.Close(f.fd) }

// ReadAt reads len(p) bytes at off, or fewer and io.EOF at the end.
func (f *fdFile) ReadAt(p []byte, off int64) (int, error) {
	return f.all("read", unix.Pread, io.EOF, p, off)
}

// WriteAt writes all of p at off.
func (f *fdFile) WriteAt(p []byte, off int64) (int, error) {
	return f.all("write", unix.Pwrite, io.ErrShortWrite, p, off)
}

// all repeats call (pread or pwrite) until p is done, through EINTR and
// short transfers; a transfer of nothing ends it with short.
func (f *fdFile) all(op string, call func(int, []byte, int64) (int, error), short error, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := call(f.fd, p[n:], off+int64(n))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return n, &fs.PathError{Op: op, Path: f.name, Err: err}
		case m == 0:
			return n, short
		}
		n += m
	}
	return n, nil
}

func (f *fdFile) Truncate(size int64) error {
	for {
		err := unix.Ftruncate(f.fd, size)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "truncate", Path: f.name, Err: err}
		}
		return nil
	}
}

func (f *fdFile) Stat() (os.FileInfo, error) {
	if st := f.opened; st != nil {
		f.opened = nil
		return fileInfo{name: f.name, st: *st}, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: f.name, Err: err}
	}
	return fileInfo{name: f.name, st: st}, nil
}

// fileInfo is os.FileInfo over the Stat_t of a cipher file, which is
// always a regular file (opened O_NOFOLLOW through a regular-file node).
type fileInfo struct {
	name string
	st   unix.Stat_t
}

func (fi fileInfo) Name() string       { return fi.name }
func (fi fileInfo) Size() int64        { return fi.st.Size }
func (fi fileInfo) Mode() fs.FileMode  { return fs.FileMode(fi.st.Mode & 0o777) }
func (fi fileInfo) ModTime() time.Time { return time.Unix(fi.st.Mtim.Unix()) }
func (fi fileInfo) IsDir() bool        { return false }
func (fi fileInfo) Sys() any           { return &fi.st }

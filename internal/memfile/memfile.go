// Package memfile is an in-memory file for tests and benchmarks: it
// satisfies envelope.Backing and io.ReaderAt/io.WriterAt, grows on writes
// past its end (the gap reads as zeros, like a sparse file), and is safe
// for concurrent use.
package memfile

import (
	"io"
	"io/fs"
	"os"
	"sync"
	"time"
)

// File is an in-memory file. The zero value is an empty file.
type File struct {
	mu   sync.RWMutex
	data []byte
}

// New returns a File holding a copy of b.
func New(b []byte) *File { return &File{data: append([]byte(nil), b...)} }

// ReadAt reads at off, returning io.EOF at the end, as io.ReaderAt.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes at off, growing the file as needed.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.data)) {
		f.grow(end)
	}
	return copy(f.data[off:], p), nil
}

func (f *File) grow(n int64) {
	if n <= int64(cap(f.data)) {
		old := len(f.data)
		f.data = f.data[:n]
		clear(f.data[old:])
		return
	}
	d := make([]byte, n, max(n, 2*int64(cap(f.data))))
	copy(d, f.data)
	f.data = d
}

// Truncate sets the size.
func (f *File) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n > int64(len(f.data)) {
		f.grow(n)
	} else {
		f.data = f.data[:n]
	}
	return nil
}

// Sync does nothing.
func (f *File) Sync() error { return nil }

// Bytes returns a copy of the content.
func (f *File) Bytes() []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return append([]byte(nil), f.data...)
}

// Stat reports the size; the other fields are placeholders.
func (f *File) Stat() (os.FileInfo, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return info(len(f.data)), nil
}

type info int64

func (i info) Name() string       { return "memfile" }
func (i info) Size() int64        { return int64(i) }
func (i info) Mode() fs.FileMode  { return 0o600 }
func (i info) ModTime() time.Time { return time.Time{} }
func (i info) IsDir() bool        { return false }
func (i info) Sys() any           { return nil }

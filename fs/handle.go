package fs

import (
	"context"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// handle is one open file description: a reference to its inode's shared
// open state.
type handle struct {
	n  *Node
	of *openFile
}

var (
	_ = (gofs.FileReader)((*handle)(nil))
	_ = (gofs.FileWriter)((*handle)(nil))
	_ = (gofs.FileFlusher)((*handle)(nil))
	_ = (gofs.FileFsyncer)((*handle)(nil))
	_ = (gofs.FileReleaser)((*handle)(nil))
	_ = (gofs.FileGetattrer)((*handle)(nil))
	_ = (gofs.FileAllocater)((*handle)(nil))
	_ = (gofs.FileLseeker)((*handle)(nil))
)

// Read reads plaintext; a block that fails authentication fails the read
// with EIO (and a log line naming file and block).
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ef, errno := h.n.file(h.of, false)
	if errno != 0 || ef == nil {
		return fuse.ReadResultData(nil), errno
	}
	n, err := ef.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.n.fail("read", err)
	}
	// A vector result goes to the kernel with one writev. go-fuse v2.12
	// first tries to splice a ReadResultData (a pipe resized and filled
	// with the header, then drained again): three wasted system calls per
	// read.
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

// Write writes plaintext at off, clearing set-user-ID and set-group-ID
// bits first as the writer's credentials require (dropPrivs).
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.n.r.opts.ReadOnly {
		return 0, syscall.EROFS
	}
	if errno := h.n.dropPrivs(ctx, h.of); errno != 0 {
		return 0, errno
	}
	ef, errno := h.n.file(h.of, true)
	if errno != 0 {
		return 0, errno
	}
	n, err := ef.WriteAt(data, off)
	if err != nil {
		return uint32(n), h.n.fail("write", err)
	}
	return uint32(n), 0
}

// Flush has nothing to do: writes reach the backing file synchronously,
// and locks are the kernel's. ENOSYS tells the kernel so; it stops
// sending FLUSH on every close for the life of the mount (it still writes
// back dirty mmap pages on close).
func (h *handle) Flush(ctx context.Context) syscall.Errno { return syscall.ENOSYS }

// Fsync flushes the file: its header's list of holes if that is behind
// (envelope.File.Sync), and the backing file.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if ef, errno := h.n.file(h.of, false); errno == 0 && ef != nil {
		if err := ef.Sync(); err != nil {
			return h.n.fail("fsync", err)
		}
		return 0
	}
	return gofs.ToErrno(h.of.back.Sync())
}

// Release drops the handle's reference to the shared state.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.n.release(h.of)
	return 0
}

// Getattr reports attributes through the open descriptor.
func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(int(h.of.back.Fd()), &st); err != nil {
		return gofs.ToErrno(err)
	}
	h.n.r.fillAttr(&st, &out.Attr)
	out.Size = uint64(h.of.size())
	return 0
}

// Allocate implements fallocate: mode 0 and KEEP_SIZE reserve backing
// space for the range (mode 0 also extends the size); other modes are not
// supported. Like a write it clears set-user-ID and set-group-ID bits
// (dropPrivs), which the kernel does not ask for.
func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	if h.n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	if mode&^unix.FALLOC_FL_KEEP_SIZE != 0 {
		return syscall.EOPNOTSUPP
	}
	if errno := h.n.dropPrivs(ctx, h.of); errno != 0 {
		return errno
	}
	l := h.n.r.layout
	end := int64(off + size)
	cOff := l.BlockOffset(int64(off) / int64(l.BlockSize()))
	cEnd := l.CipherSize(end)
	if err := unix.Fallocate(int(h.of.back.Fd()), unix.FALLOC_FL_KEEP_SIZE, cOff, cEnd-cOff); err != nil {
		return gofs.ToErrno(err)
	}
	if mode&unix.FALLOC_FL_KEEP_SIZE != 0 || end <= h.of.size() {
		return 0
	}
	ef, errno := h.n.file(h.of, true)
	if errno != 0 {
		return errno
	}
	if err := ef.Truncate(end); err != nil {
		return h.n.fail("fallocate", err)
	}
	return 0
}

// Lseek implements SEEK_DATA and SEEK_HOLE conservatively: the whole file
// is data and the only hole is the one at its end. (Holes inside a file
// read as zeros either way; reporting them is an optimisation.)
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := uint64(h.of.size())
	if off >= size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case unix.SEEK_DATA:
		return off, 0
	case unix.SEEK_HOLE:
		return size, 0
	}
	return 0, syscall.EINVAL
}

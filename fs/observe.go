package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Op is a kind of FUSE request, as an Observer sees it. The set is small
// and fixed, so a metric labelled by it stays bounded.
type Op uint8

// The requests an Observer times. Extended-attribute requests count as
// OpXattr; lock and ioctl requests are not timed.
const (
	OpLookup Op = iota
	OpGetattr
	OpSetattr
	OpMknod
	OpMkdir
	OpUnlink
	OpRmdir
	OpRename
	OpLink
	OpSymlink
	OpReadlink
	OpAccess
	OpCreate
	OpOpen
	OpRead
	OpWrite
	OpFlush
	OpFsync
	OpFallocate
	OpLseek
	OpCopyFileRange
	OpRelease
	OpOpendir
	OpReaddir
	OpReleasedir
	OpFsyncdir
	OpStatfs
	OpXattr
	// NumOps is the number of Op values, for arrays indexed by Op.
	NumOps
)

// String returns the op's name in lower case, as FUSE names the request.
func (o Op) String() string {
	switch o {
	case OpLookup:
		return "lookup"
	case OpGetattr:
		return "getattr"
	case OpSetattr:
		return "setattr"
	case OpMknod:
		return "mknod"
	case OpMkdir:
		return "mkdir"
	case OpUnlink:
		return "unlink"
	case OpRmdir:
		return "rmdir"
	case OpRename:
		return "rename"
	case OpLink:
		return "link"
	case OpSymlink:
		return "symlink"
	case OpReadlink:
		return "readlink"
	case OpAccess:
		return "access"
	case OpCreate:
		return "create"
	case OpOpen:
		return "open"
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpFsync:
		return "fsync"
	case OpFallocate:
		return "fallocate"
	case OpLseek:
		return "lseek"
	case OpCopyFileRange:
		return "copy_file_range"
	case OpRelease:
		return "release"
	case OpOpendir:
		return "opendir"
	case OpReaddir:
		return "readdir"
	case OpReleasedir:
		return "releasedir"
	case OpFsyncdir:
		return "fsyncdir"
	case OpStatfs:
		return "statfs"
	case OpXattr:
		return "xattr"
	}
	return "unknown"
}

// Observer receives what a mount serves, for metrics: every timed FUSE
// request, the plaintext bytes read and written, files opened and
// released, and authentication failures. Its methods are called
// concurrently on every request's path, so they must be quick and must
// not block; nothing passed to them names a file. A nil Options.Observer
// leaves requests untouched (no clock read, no extra call).
type Observer interface {
	// Op reports one request of kind op that took d, whatever its outcome.
	Op(op Op, d time.Duration)
	// BytesRead and BytesWritten report the plaintext bytes one READ
	// returned or one WRITE took.
	BytesRead(n int)
	BytesWritten(n int)
	// FileOpened and FileReleased report a file handle opened (OPEN,
	// CREATE) and released: their difference is the files open now.
	FileOpened()
	FileReleased()
	// AuthFailure reports a read or open that failed because stored data
	// (a block or a header) did not authenticate.
	AuthFailure()
}

// observed is the raw filesystem that reports every request around the
// others to an Observer. It is outermost, so a request's time includes
// waiting for the rename gate.
type observed struct {
	fuse.RawFileSystem
	obs Observer
}

func (o *observed) done(op Op, start time.Time) { o.obs.Op(op, time.Since(start)) }

func (o *observed) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	defer o.done(OpLookup, time.Now())
	return o.RawFileSystem.Lookup(cancel, h, name, out)
}

func (o *observed) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer o.done(OpGetattr, time.Now())
	return o.RawFileSystem.GetAttr(cancel, in, out)
}

func (o *observed) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer o.done(OpSetattr, time.Now())
	return o.RawFileSystem.SetAttr(cancel, in, out)
}

func (o *observed) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.done(OpMknod, time.Now())
	return o.RawFileSystem.Mknod(cancel, in, name, out)
}

func (o *observed) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.done(OpMkdir, time.Now())
	return o.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (o *observed) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer o.done(OpUnlink, time.Now())
	return o.RawFileSystem.Unlink(cancel, h, name)
}

func (o *observed) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer o.done(OpRmdir, time.Now())
	return o.RawFileSystem.Rmdir(cancel, h, name)
}

func (o *observed) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	defer o.done(OpRename, time.Now())
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (o *observed) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.done(OpLink, time.Now())
	return o.RawFileSystem.Link(cancel, in, name, out)
}

func (o *observed) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer o.done(OpSymlink, time.Now())
	return o.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (o *observed) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	defer o.done(OpReadlink, time.Now())
	return o.RawFileSystem.Readlink(cancel, h)
}

func (o *observed) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	defer o.done(OpAccess, time.Now())
	return o.RawFileSystem.Access(cancel, in)
}

func (o *observed) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	defer o.done(OpXattr, time.Now())
	return o.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (o *observed) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	defer o.done(OpXattr, time.Now())
	return o.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (o *observed) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	defer o.done(OpXattr, time.Now())
	return o.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (o *observed) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	defer o.done(OpXattr, time.Now())
	return o.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

// opened counts a file handle the request st answers opened.
func (o *observed) opened(st fuse.Status) fuse.Status {
	if st == fuse.OK {
		o.obs.FileOpened()
	}
	return st
}

func (o *observed) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer o.done(OpCreate, time.Now())
	return o.opened(o.RawFileSystem.Create(cancel, in, name, out))
}

func (o *observed) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	defer o.done(OpCreate, time.Now())
	return o.opened(o.RawFileSystem.Tmpfile(cancel, in, out))
}

func (o *observed) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer o.done(OpOpen, time.Now())
	return o.opened(o.RawFileSystem.Open(cancel, in, out))
}

func (o *observed) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	t := time.Now()
	res, st := o.RawFileSystem.Read(cancel, in, buf)
	if st == fuse.OK && res != nil {
		o.obs.BytesRead(res.Size())
	}
	o.done(OpRead, t)
	return res, st
}

// Write is what the server calls when Writev answers ENOSYS, which the
// node bridge never does; both are observed all the same, and an ENOSYS
// Writev is not counted, so a write is never counted twice.
func (o *observed) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := o.RawFileSystem.Write(cancel, in, data)
	o.obs.BytesWritten(int(n))
	o.done(OpWrite, t)
	return n, st
}

func (o *observed) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := o.RawFileSystem.Writev(cancel, in, data)
	if st != fuse.ENOSYS {
		o.obs.BytesWritten(int(n))
		o.done(OpWrite, t)
	}
	return n, st
}

func (o *observed) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	defer o.done(OpCopyFileRange, time.Now())
	return o.RawFileSystem.CopyFileRange(cancel, in)
}

func (o *observed) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	defer o.done(OpLseek, time.Now())
	return o.RawFileSystem.Lseek(cancel, in, out)
}

func (o *observed) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	t := time.Now()
	o.RawFileSystem.Release(cancel, in)
	o.obs.FileReleased()
	o.done(OpRelease, t)
}

func (o *observed) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	defer o.done(OpFlush, time.Now())
	return o.RawFileSystem.Flush(cancel, in)
}

func (o *observed) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	defer o.done(OpFsync, time.Now())
	return o.RawFileSystem.Fsync(cancel, in)
}

func (o *observed) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	defer o.done(OpFallocate, time.Now())
	return o.RawFileSystem.Fallocate(cancel, in)
}

func (o *observed) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer o.done(OpOpendir, time.Now())
	return o.RawFileSystem.OpenDir(cancel, in, out)
}

func (o *observed) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer o.done(OpReaddir, time.Now())
	return o.RawFileSystem.ReadDir(cancel, in, out)
}

func (o *observed) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer o.done(OpReaddir, time.Now())
	return o.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (o *observed) ReleaseDir(in *fuse.ReleaseIn) {
	defer o.done(OpReleasedir, time.Now())
	o.RawFileSystem.ReleaseDir(in)
}

func (o *observed) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	defer o.done(OpFsyncdir, time.Now())
	return o.RawFileSystem.FsyncDir(cancel, in)
}

func (o *observed) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	defer o.done(OpStatfs, time.Now())
	return o.RawFileSystem.StatFs(cancel, h, out)
}

package fs

import (
	"fmt"
	"slices"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// listings sits between the FUSE server and go-fuse's node bridge so that
// the kernel sends no OPENDIR and no RELEASEDIR: two FUSE round trips of
// every directory listing (find, du, ls, rm -rf) for a handle kmsfs does
// not need.
//
// It answers OPENDIR with ENOSYS (on kernels that take that, Linux 5.1
// and later; Mount puts it in place only over a cipher dir whose
// filesystem keeps directory offsets stable, see stableDirOffsets). From then on the kernel opens
// directories without asking (it does not send RELEASEDIR either), caches
// their listings as FOPEN_CACHE_DIR did (its default for a filesystem
// without OPENDIR: dropped when the directory changes through the mount or
// its mtime moves), and sends READDIR(PLUS) with file handle 0. For those,
// listings opens a directory handle of its own through the bridge per
// listing: a request at offset 0 starts one, and a request continues a
// listing whose handle is idle and whose last reply ended at the request's
// offset. Any other request (another lister, a seek) gets a fresh handle,
// which the bridge seeks to the offset. Two listings never share a handle:
// the bridge answers a request at an offset inside its handle's last reply
// by replaying that reply's rest, which fits only if the same lister (with
// the same reply size) asked for it. A handle is released when its listing
// reaches its end, on an error, when the directory changes through the
// mount (its stream may hold entries read before), when the kernel forgets
// the directory, when more than maxListings are open (least recently used
// first: a listing abandoned half-way never reaches its end) and at
// unmount.
type listings struct {
	fuse.RawFileSystem
	srv *fuse.Server

	mu    sync.Mutex
	open  map[uint64][]*listing // by node ID, in use or idle
	count int                   // handles in open
	tick  uint64
}

// listing is a directory handle that listings opened for one listing.
type listing struct {
	node, fh uint64
	busy     bool   // a request is using it
	next     uint64 // the offset its last reply ended at, where its listing goes on
	used     uint64 // listings.tick at its last use
	gone     bool   // out of open: the request using it releases it
}

// maxListings bounds the directory handles listings keeps open.
const maxListings = 64

func newListings(fs fuse.RawFileSystem) *listings {
	return &listings{RawFileSystem: fs, open: make(map[uint64][]*listing)}
}

// stableDirOffsets reports whether the filesystem of the directory open
// as fd gives directory entries offsets that stay valid across changes
// (hashes or indexes, not positions): ext2/3/4, XFS, btrfs, and tmpfs from
// Linux 6.6. Only there may listings decline OPENDIR: a directory changed
// through the mount drops its listing handles (see Mknod), and a listing
// that goes on past the change seeks a fresh handle to its offset, which
// over positions (overlayfs, older tmpfs) would skip names after an
// unlink. It looks at the cipher dir's own filesystem only: one mounted
// inside the cipher dir is not checked. It is a variable for the tests.
var stableDirOffsets = func(fd int) bool {
	var st unix.Statfs_t
	if unix.Fstatfs(fd, &st) != nil {
		return false
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC:
		return true
	case unix.TMPFS_MAGIC:
		return kernelAtLeast(6, 6)
	}
	return false
}

// kernelAtLeast reports whether the running kernel is at least
// major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return releaseAtLeast(unix.ByteSliceToString(u.Release[:]), major, minor)
}

// releaseAtLeast reports whether the kernel release string release (as
// uname -r prints it) is at least major.minor; false if it cannot tell.
func releaseAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func (l *listings) Init(srv *fuse.Server) {
	l.srv = srv
	l.RawFileSystem.Init(srv)
}

// OpenDir declines, so that the kernel stops sending OPENDIR and
// RELEASEDIR.
func (l *listings) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if l.srv.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT == 0 {
		return l.RawFileSystem.OpenDir(cancel, in, out) // the kernel would fail the open without one
	}
	return fuse.ENOSYS
}

func (l *listings) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.read(cancel, in, out, l.RawFileSystem.ReadDir)
}

func (l *listings) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.read(cancel, in, out, l.RawFileSystem.ReadDirPlus)
}

// read answers a READDIR(PLUS) through the handle of the listing it
// belongs to. A reply with no entries ends the listing (the bridge adds
// none only at the end), and so does an error.
func (l *listings) read(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(cancel, in, out) // the bridge's OPENDIR handle, on a kernel that needs OPENDIR
	}
	ls, st := l.acquire(cancel, in)
	if !st.Ok() {
		return st
	}
	end := true // also if the bridge panics (go-fuse recovers), so that ls is not kept forever
	defer func() { l.done(ls, end, out.Offset) }()
	handled := *in
	handled.Fh = ls.fh
	st = read(cancel, &handled, out)
	end = !st.Ok() || out.Offset == in.Offset
	return st
}

// acquire returns the idle handle of the listing that the request
// continues, or opens a fresh one.
func (l *listings) acquire(cancel <-chan struct{}, in *fuse.ReadIn) (*listing, fuse.Status) {
	l.mu.Lock()
	l.tick++
	if in.Offset != 0 {
		for _, ls := range l.open[in.NodeId] {
			if !ls.busy && ls.next == in.Offset {
				ls.busy, ls.used = true, l.tick
				l.mu.Unlock()
				return ls, fuse.OK
			}
		}
	}
	l.mu.Unlock()

	var oo fuse.OpenOut
	st := l.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &oo)
	if !st.Ok() {
		return nil, st
	}
	fresh := &listing{node: in.NodeId, fh: oo.Fh, busy: true}

	// Handles are released here with l.mu held: a FORGET of their
	// directory waits in drop meanwhile, so the bridge still knows the
	// node when its handle goes.
	l.mu.Lock()
	defer l.mu.Unlock()
	fresh.used = l.tick
	l.open[in.NodeId] = append(l.open[in.NodeId], fresh)
	l.count++
	for l.count > maxListings {
		var old *listing
		for _, lss := range l.open {
			for _, ls := range lss {
				if !ls.busy && (old == nil || ls.used < old.used) {
					old = ls
				}
			}
		}
		if old == nil {
			break // all in use: over the bound until they finish
		}
		l.retire(old)
		l.release(old)
	}
	return fresh, fuse.OK
}

// retire takes ls out of open for good: whoever retires an idle handle
// releases it, a busy one is released by the request using it. l.mu is
// held.
func (l *listings) retire(ls *listing) {
	if ls.gone {
		return
	}
	ls.gone = true
	l.count--
	lss := slices.DeleteFunc(l.open[ls.node], func(o *listing) bool { return o == ls })
	if len(lss) == 0 {
		delete(l.open, ls.node)
	} else {
		l.open[ls.node] = lss
	}
}

// done ends a request's use of ls, whose reply ended at offset next; with
// end, the listing is over.
func (l *listings) done(ls *listing, end bool, next uint64) {
	l.mu.Lock()
	ls.busy, ls.next = false, next
	if end {
		l.retire(ls)
	}
	free := ls.gone
	l.mu.Unlock()
	if free {
		l.release(ls)
	}
}

// drop retires node's handles, releasing the idle ones (a request still
// using one releases it when done), after a change of the directory or
// when the kernel forgets it. (A handle reads its directory only once it
// is in open: from then on, a change drops it.)
func (l *listings) drop(node uint64) {
	l.mu.Lock()
	idle := l.retireAll(nil, node)
	l.mu.Unlock()
	for _, ls := range idle {
		l.release(ls)
	}
}

// retireAll retires node's handles and appends the idle ones, which the
// caller is to release, to idle. l.mu is held.
func (l *listings) retireAll(idle []*listing, node uint64) []*listing {
	for _, ls := range slices.Clone(l.open[node]) {
		l.retire(ls)
		if !ls.busy {
			idle = append(idle, ls)
		}
	}
	return idle
}

func (l *listings) release(ls *listing) {
	l.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: ls.node}, Fh: ls.fh})
}

// A change of a directory through the mount drops its listing handles:
// a handle's stream may hold entries read before the change, and a listing
// that starts after it must not continue on one. (The kernel drops its
// cached listing of the directory too.)

func (l *listings) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Mknod(cancel, in, name, out)
}

func (l *listings) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (l *listings) Unlink(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Unlink(cancel, in, name)
}

func (l *listings) Rmdir(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Rmdir(cancel, in, name)
}

func (l *listings) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	defer l.drop(in.Newdir)
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (l *listings) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Link(cancel, in, name, out)
}

func (l *listings) Symlink(cancel <-chan struct{}, in *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Symlink(cancel, in, target, name, out)
}

func (l *listings) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer l.drop(in.NodeId)
	return l.RawFileSystem.Create(cancel, in, name, out)
}

// Forget releases the directory's listing handles before the bridge lets
// go of the node.
func (l *listings) Forget(nodeID, nlookup uint64) {
	l.drop(nodeID)
	l.RawFileSystem.Forget(nodeID, nlookup)
}

// OnUnmount releases every listing handle, so that their directory
// descriptors are closed with the rest.
func (l *listings) OnUnmount() {
	l.mu.Lock()
	var idle []*listing
	for node := range l.open {
		idle = l.retireAll(idle, node)
	}
	l.mu.Unlock()
	for _, ls := range idle {
		l.release(ls)
	}
	l.RawFileSystem.OnUnmount()
}

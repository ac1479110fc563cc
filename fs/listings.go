package fs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// listings sits between the FUSE server and go-fuse's node bridge so that
// the kernel sends no OPENDIR and no RELEASEDIR: two round trips of every
// directory listing (find, du, ls, rm -rf), 30-45 µs each on this kind of
// VM, for a handle kmsfs does not need.
//
// It answers OPENDIR with ENOSYS (on kernels that take that, Linux 5.1
// and later; older ones get the bridge's answer). From then on the kernel opens
// directories without asking (it does not send RELEASEDIR either), caches
// their listings as FOPEN_CACHE_DIR did (its default for a filesystem
// without OPENDIR: dropped when the directory changes through the mount or
// its mtime moves), and sends READDIR(PLUS) with file handle 0. For those,
// listings opens a directory handle of its own through the bridge, one per
// directory, shared by concurrent listings of it (the bridge seeks the
// handle to each request's offset), and releases it when a listing
// reaches its end, when the kernel forgets the directory, when more than
// maxListings are open (least recently used first: a listing abandoned
// half-way never reaches its end) and at unmount. Concurrent listings of
// one directory take turns on its handle, each seeking it to its offset;
// with the kernel's cache in front that is rare.
type listings struct {
	fuse.RawFileSystem
	srv *fuse.Server

	mu   sync.Mutex
	open map[uint64]*listing // by node ID
	tick uint64
}

// listing is a directory handle that listings opened.
type listing struct {
	node, fh uint64
	refs     int    // requests using it
	used     uint64 // listings.tick at its last use
	gone     bool   // out of the map: the last request using it releases it
}

// maxListings bounds the directory handles listings keeps open.
const maxListings = 64

func newListings(fs fuse.RawFileSystem) *listings {
	return &listings{RawFileSystem: fs, open: make(map[uint64]*listing)}
}

func (l *listings) Init(srv *fuse.Server) {
	l.srv = srv
	l.RawFileSystem.Init(srv)
}

// OpenDir declines, so that the kernel stops sending OPENDIR and
// RELEASEDIR.
func (l *listings) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if l.srv.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT == 0 {
		return l.RawFileSystem.OpenDir(cancel, in, out) // the kernel would fail the open
	}
	return fuse.ENOSYS
}

func (l *listings) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.read(cancel, in, out, l.RawFileSystem.ReadDir)
}

func (l *listings) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.read(cancel, in, out, l.RawFileSystem.ReadDirPlus)
}

// read answers a READDIR(PLUS) through the directory's listing handle.
// A reply with no entries ends the listing (the bridge adds none only at
// the end), and so does an error: the next request opens a fresh handle.
func (l *listings) read(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(cancel, in, out) // the bridge's OPENDIR handle, on a kernel that needs OPENDIR
	}
	ls, st := l.acquire(cancel, in)
	if !st.Ok() {
		return st
	}
	end := true // also if the bridge panics (go-fuse recovers), so that ls is not kept forever
	defer func() { l.done(ls, end) }()
	handled := *in
	handled.Fh = ls.fh
	st = read(cancel, &handled, out)
	end = !st.Ok() || out.Offset == in.Offset
	return st
}

// acquire returns the directory's listing handle, opening one if needed.
func (l *listings) acquire(cancel <-chan struct{}, in *fuse.ReadIn) (*listing, fuse.Status) {
	l.mu.Lock()
	l.tick++
	ls := l.use(in.NodeId)
	l.mu.Unlock()
	if ls != nil {
		return ls, fuse.OK
	}

	var oo fuse.OpenOut
	st := l.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &oo)
	if !st.Ok() {
		return nil, st
	}
	fresh := &listing{node: in.NodeId, fh: oo.Fh, refs: 1}

	// Handles are released here with l.mu held: a FORGET of their
	// directory waits in drop meanwhile, so the bridge still knows the
	// node when its handle goes.
	l.mu.Lock()
	defer l.mu.Unlock()
	if ls := l.use(in.NodeId); ls != nil { // another request opened one meanwhile
		l.release(fresh)
		return ls, fuse.OK
	}
	fresh.used = l.tick
	l.open[in.NodeId] = fresh
	for len(l.open) > maxListings {
		var old *listing
		for _, ls := range l.open {
			if ls.refs == 0 && (old == nil || ls.used < old.used) {
				old = ls
			}
		}
		if old == nil {
			break // all in use: over the bound until they finish
		}
		delete(l.open, old.node)
		l.release(old)
	}
	return fresh, fuse.OK
}

// use returns node's listing, counted as used by one more request, or nil;
// l.mu is held.
func (l *listings) use(node uint64) *listing {
	ls := l.open[node]
	if ls != nil {
		ls.refs++
		ls.used = l.tick
	}
	return ls
}

// retire takes ls out of the map for good: the last request using it
// releases it. l.mu is held.
func (l *listings) retire(ls *listing) {
	ls.gone = true
	if l.open[ls.node] == ls {
		delete(l.open, ls.node)
	}
}

// done ends a request's use of ls; with end, the listing is over.
func (l *listings) done(ls *listing, end bool) {
	l.mu.Lock()
	ls.refs--
	if end {
		l.retire(ls)
	}
	free := ls.gone && ls.refs == 0
	l.mu.Unlock()
	if free {
		l.release(ls)
	}
}

// drop retires node's listing, releasing it unless a request still uses
// it (that request then does).
func (l *listings) drop(node uint64) {
	l.mu.Lock()
	ls := l.open[node]
	free := ls != nil && ls.refs == 0
	if ls != nil {
		l.retire(ls)
	}
	l.mu.Unlock()
	if free {
		l.release(ls)
	}
}

func (l *listings) release(ls *listing) {
	l.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: ls.node}, Fh: ls.fh})
}

// Forget releases the directory's listing handle before the bridge lets go
// of the node.
func (l *listings) Forget(nodeID, nlookup uint64) {
	l.drop(nodeID)
	l.RawFileSystem.Forget(nodeID, nlookup)
}

// OnUnmount releases every listing handle, so that their directory
// descriptors are closed with the rest.
func (l *listings) OnUnmount() {
	l.mu.Lock()
	for _, ls := range l.open {
		l.retire(ls)
		if ls.refs == 0 {
			l.release(ls)
		}
	}
	l.mu.Unlock()
	l.RawFileSystem.OnUnmount()
}

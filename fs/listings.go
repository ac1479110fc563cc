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
		return read(cancel, in, out) // opened before OPENDIR was declined: cannot happen, but the handle is the bridge's
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
	if ls := l.open[in.NodeId]; ls != nil {
		ls.refs++
		ls.used = l.tick
		l.mu.Unlock()
		return ls, fuse.OK
	}
	l.mu.Unlock()

	var oo fuse.OpenOut
	st := l.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &oo)
	if !st.Ok() {
		return nil, st
	}
	fresh := &listing{node: in.NodeId, fh: oo.Fh, refs: 1}

	l.mu.Lock()
	if ls := l.open[in.NodeId]; ls != nil { // another request opened one meanwhile
		ls.refs++
		ls.used = l.tick
		l.mu.Unlock()
		l.release(fresh)
		return ls, fuse.OK
	}
	defer l.mu.Unlock()
	fresh.used = l.tick
	l.open[in.NodeId] = fresh
	// Evicted handles are released with l.mu held: a FORGET of their
	// directory waits in drop meanwhile, so the bridge still knows the
	// node when its handle goes.
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

// done ends a request's use of ls; with end, the listing is over and ls
// leaves the map.
func (l *listings) done(ls *listing, end bool) {
	l.mu.Lock()
	ls.refs--
	if end && !ls.gone {
		ls.gone = true
		if l.open[ls.node] == ls {
			delete(l.open, ls.node)
		}
	}
	free := ls.gone && ls.refs == 0
	l.mu.Unlock()
	if free {
		l.release(ls)
	}
}

// drop takes node's listing out of the map, releasing it unless a request
// still uses it (that request then does).
func (l *listings) drop(node uint64) {
	l.mu.Lock()
	ls := l.open[node]
	free := false
	if ls != nil {
		delete(l.open, node)
		ls.gone = true
		free = ls.refs == 0
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
	nodes := make([]uint64, 0, len(l.open))
	for n := range l.open {
		nodes = append(nodes, n)
	}
	l.mu.Unlock()
	for _, n := range nodes {
		l.drop(n)
	}
	l.RawFileSystem.OnUnmount()
}

package fs

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// Node is one file, directory, link or special file of the mount. It
// finds its backing object through its parent's directory descriptor and
// its name; a directory keeps a descriptor of its own while the kernel
// knows it.
type Node struct {
	gofs.Inode
	r *root

	mu    sync.Mutex
	dirfd int       // directories: open descriptor, -1 until first use
	open  *openFile // regular files: shared state of all open handles

	// With Options.Names, a directory's ID, read with its descriptor
	// (loadDirID), or why it could not be.
	dirID    names.DirID
	dirIDErr error

	// noCap records that the object has no security.capability
	// attribute, which the kernel asks for before every write.
	noCap atomic.Bool
}

var (
	_ = (gofs.NodeOnForgetter)((*Node)(nil))
	_ = (gofs.NodeGetattrer)((*Node)(nil))
	_ = (gofs.NodeSetattrer)((*Node)(nil))
	_ = (gofs.NodeStatfser)((*Node)(nil))
)

func (n *Node) isRoot() bool { return n.IsRoot() }

// newChild returns a Node for a child with the given stat.
func (n *Node) newChild(ctx context.Context, st *unix.Stat_t) *gofs.Inode {
	return n.NewInode(ctx, &Node{r: n.r, dirfd: -1}, n.r.stableAttr(st))
}

func (r *root) stableAttr(st *unix.Stat_t) gofs.StableAttr {
	return gofs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: st.Ino ^ (uint64(st.Dev)^r.dev)<<48, Gen: 1}
}

// dir returns the node's own directory descriptor, opening it on first use.
func (n *Node) dir() (int, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirfd >= 0 {
		return n.dirfd, 0
	}
	pfd, name, errno := n.loc()
	if errno != 0 {
		return -1, errno
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.EACCES {
		fd, err = unix.Openat(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return -1, gofs.ToErrno(err)
	}
	n.dirfd = fd
	n.loadDirID(fd)
	return fd, 0
}

// pinDir makes sure that name's node in this directory, if it is a
// directory the kernel knows, holds its own descriptor before the name
// goes or changes (rmdir, a rename of it or over it). The kernel opens
// directories without telling kmsfs (see listings), and a process may hold
// this one open: its fstat, fsync and listing then keep working through
// the descriptor, as on a local filesystem, and a request in it that comes
// between the rename and go-fuse moving the node does not open whatever
// the old name then is. A failure is left for that use to report.
func (n *Node) pinDir(name string) {
	if c := n.GetChild(name); c != nil && c.IsDir() {
		if cn, ok := c.Operations().(*Node); ok {
			cn.dir()
		}
	}
}

// loc returns the descriptor of the node's parent directory and the
// node's backing name in it (backing).
func (n *Node) loc() (int, string, syscall.Errno) {
	name, parent := n.Parent()
	if parent == nil {
		return -1, "", syscall.ENOENT // unlinked since the kernel looked it up
	}
	p, ok := parent.Operations().(*Node)
	if !ok {
		return -1, "", syscall.EXDEV
	}
	pfd, nm, errno := p.backing(name)
	return pfd, nm.Backing, errno
}

// OnForget closes the directory descriptor once the kernel forgets the
// node. The root is forgotten when the filesystem is unmounted: then the
// files still open (their RELEASE was dropped by the unmount) and the
// descriptors of every directory still known are closed too (the kernel
// sends no forget for them), and the root's own last.
func (n *Node) OnForget() {
	if n.isRoot() {
		n.r.closeOpenFiles()
		n.closeDirs(n.EmbeddedInode())
		n.closeDir()
		n.r.unmountedOnce.Do(func() { close(n.r.unmounted) })
		return
	}
	n.closeDir()
}

func (n *Node) closeDir() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirfd >= 0 {
		unix.Close(n.dirfd)
		n.dirfd = -1
	}
}

// closeDirs closes the descriptors of the directories below in.
func (n *Node) closeDirs(in *gofs.Inode) {
	for _, ch := range in.Children() {
		if !ch.IsDir() {
			continue
		}
		if c, ok := ch.Operations().(*Node); ok {
			c.closeDirs(ch)
			c.closeDir()
		}
	}
}

// procFd is the /proc/self/fd link of descriptor fd. A call given it
// reaches exactly the object the descriptor holds, and goes no further:
// for an O_PATH descriptor of a symlink, the symlink itself.
func procFd(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// target returns the /proc/self/fd link (procFd) through which setattr
// changes the node's backing object, and what closes it: an open file's
// descriptor, a directory's own, or, for anything else, an O_PATH
// descriptor of the node's own object (openByName), so that no change
// follows a symlink planted in the cipher dir in the object's place.
func (n *Node) target(of *openFile) (string, func(), syscall.Errno) {
	switch {
	case of != nil:
		return procFd(of.back.fd), func() {}, 0
	case n.IsDir():
		fd, errno := n.dir()
		return procFd(fd), func() {}, errno
	}
	fd, _, errno := n.openPath()
	if errno != 0 {
		return "", nil, errno
	}
	return procFd(fd), func() { unix.Close(fd) }, 0
}

// openPath returns an O_PATH descriptor of the node's own object, not
// followed if it is a symlink, and its stat (openByName).
func (n *Node) openPath() (int, unix.Stat_t, syscall.Errno) {
	return n.openByName(func(pfd int, name string) (int, error) {
		return unix.Openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	})
}

// lstat stats the node's backing object without following links.
func (n *Node) lstat(st *unix.Stat_t) syscall.Errno {
	if n.IsDir() {
		fd, errno := n.dir()
		if errno != 0 {
			return errno
		}
		return gofs.ToErrno(unix.Fstat(fd, st))
	}
	if errno := n.atName(func(pfd int, name string) error {
		err := unix.Fstatat(pfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil {
			n.r.plainLinkSize(pfd, name, st)
		}
		return err
	}); errno != 0 {
		return errno
	}
	return n.checkSelf(st)
}

// The by-name calls on a node (open, stat, readlink, extended attributes)
// run outside renames' windows (renames.go) and check, by inode number,
// that they reached the node's own object (checkSelf). When they did not
// or the name is gone, the cipher dir changed behind the mount: they
// answer ESTALE, and the kernel looks the path up again and retries, as it
// does for NFS, which finds the new object under a new node.

// checkSelf returns ESTALE unless st is of the node's own object: its
// inode number and its type. The type matters on its own: a filesystem
// may give a new object (a symlink, a FIFO, a device node planted in the
// file's place) the number the removed file had.
func (n *Node) checkSelf(st *unix.Stat_t) syscall.Errno {
	sa := n.StableAttr()
	if n.r.stableAttr(st).Ino != sa.Ino || st.Mode&unix.S_IFMT != sa.Mode {
		return syscall.ESTALE
	}
	return 0
}

// atName runs call with the node's parent descriptor and name, outside
// any rename's window (renames.go), and answers ESTALE for a name that is
// gone (staleIfGone).
func (n *Node) atName(call func(pfd int, name string) error) syscall.Errno {
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	pfd, name, errno := n.loc()
	if errno != 0 {
		return errno
	}
	return staleIfGone(call(pfd, name))
}

// openByName opens the node's own object with open (atName) and checks
// that it is the node's (checkSelf), returning its stat too. The gate is
// held only around open: the descriptor holds on to what the name named.
func (n *Node) openByName(open func(pfd int, name string) (int, error)) (int, unix.Stat_t, syscall.Errno) {
	fd := -1
	var st unix.Stat_t
	errno := n.atName(func(pfd int, name string) (err error) {
		fd, err = open(pfd, name)
		return err
	})
	if errno == 0 {
		if errno = n.checkSelfFd(fd, &st); errno != 0 {
			unix.Close(fd)
		}
	}
	return fd, st, errno
}

// checkSelfFd is checkSelf for an open descriptor; it fills st.
func (n *Node) checkSelfFd(fd int, st *unix.Stat_t) syscall.Errno {
	if err := unix.Fstat(fd, st); err != nil {
		return gofs.ToErrno(err)
	}
	return n.checkSelf(st)
}

// staleIfGone is the errno of a by-name call on a node (nil: 0): ESTALE
// for a name that is gone (see checkSelf).
func staleIfGone(err error) syscall.Errno {
	if err == unix.ENOENT {
		return syscall.ESTALE
	}
	return gofs.ToErrno(err)
}

// fillAttr converts a backing stat into the attributes the mount shows:
// regular files show their plaintext size.
func (r *root) fillAttr(st *unix.Stat_t, out *fuse.Attr) {
	var s syscall.Stat_t
	s.Dev, s.Ino, s.Nlink, s.Mode, s.Uid, s.Gid, s.Rdev = st.Dev, st.Ino, st.Nlink, st.Mode, st.Uid, st.Gid, st.Rdev
	s.Size, s.Blksize, s.Blocks = st.Size, st.Blksize, st.Blocks
	s.Atim = syscall.Timespec(st.Atim)
	s.Mtim = syscall.Timespec(st.Mtim)
	s.Ctim = syscall.Timespec(st.Ctim)
	out.FromStat(&s)
	out.Ino = r.stableAttr(st).Ino
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		out.Size = uint64(r.layout.PlainSize(st.Size))
	}
}

// Getattr reports the node's attributes, with the plaintext size.
func (n *Node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.Getattr(ctx, out)
	}
	if of := n.acquireExisting(); of != nil {
		// Open somewhere: stat through the descriptor, which works even
		// when the last name is gone.
		defer n.release(of)
		return (&handle{n: n, of: of}).Getattr(ctx, out)
	}
	var st unix.Stat_t
	if errno := n.lstat(&st); errno != 0 {
		return errno
	}
	n.r.fillAttr(&st, &out.Attr)
	return 0
}

// Setattr changes mode, owner, size and times.
func (n *Node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	// An open file is changed through its descriptor, which works even
	// when its last name is gone; a directory through its own descriptor.
	of := n.acquireExisting()
	if of != nil {
		defer n.release(of)
	}
	path, closeTarget, errno := n.target(of)
	if errno != 0 {
		return errno
	}
	defer closeTarget()
	if m, ok := in.GetMode(); ok {
		if err := unix.Fchmodat(unix.AT_FDCWD, path, m&07777, 0); err != nil {
			return gofs.ToErrno(err)
		}
		if of != nil {
			of.privs.Store(m&privBits != 0)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := unix.Fchownat(unix.AT_FDCWD, path, u, g, 0); err != nil {
			return gofs.ToErrno(err)
		}
	}
	if sz, ok := in.GetSize(); ok {
		if errno := n.truncate(ctx, f, int64(sz)); errno != 0 {
			return errno
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		var err error
		if aok {
			ts[0], err = unix.TimeToTimespec(atime)
		}
		if mok && err == nil {
			ts[1], err = unix.TimeToTimespec(mtime)
		}
		if err != nil {
			return gofs.ToErrno(err)
		}
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, 0); err != nil {
			return gofs.ToErrno(err)
		}
	}
	return n.Getattr(ctx, f, out)
}

// Statfs reports the cipher dir's filesystem.
func (n *Node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s unix.Statfs_t
	if err := unix.Fstatfs(n.r.fd, &s); err != nil {
		return gofs.ToErrno(err)
	}
	var ss syscall.Statfs_t
	ss.Blocks, ss.Bfree, ss.Bavail, ss.Files, ss.Ffree = s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree
	ss.Bsize, ss.Namelen, ss.Frsize = s.Bsize, s.Namelen, s.Frsize
	out.FromStatfsT(&ss)
	return 0
}

package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var (
	_ = (gofs.NodeOpener)((*Node)(nil))
	_ = (gofs.NodeCreater)((*Node)(nil))
)

// Open opens a file. All handles share the inode's state; the backing file
// is always opened read-write when it can be (partial-block writes read
// before they write), and O_APPEND is left to the kernel, which sends
// appends at the file's end.
func (n *Node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.r.opts.ReadOnly && flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if flags&unix.O_TRUNC != 0 {
		if errno := n.truncate(ctx, nil, 0); errno != 0 {
			return nil, 0, errno
		}
	}
	of, errno := n.acquire(flags&(unix.O_WRONLY|unix.O_RDWR) != 0)
	if errno != 0 {
		return nil, 0, errno
	}
	if flags&(unix.O_WRONLY|unix.O_RDWR) != 0 && !of.back.writable {
		n.release(of)
		return nil, 0, syscall.EACCES
	}
	return &handle{n: n, of: of}, 0, 0
}

// Create creates and opens a regular file. Its header is written with its
// first write, from a data key the key source prepared in advance.
func (n *Node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if errno := writeLongSide(fd, nm); errno != 0 {
		return nil, nil, 0, errno
	}
	c, err := n.openCipher(fd, nm.Backing, unix.O_CREAT|int(flags&unix.O_EXCL), mode)
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	// Without O_EXCL the name may have been something other than a
	// regular file already (planted in the cipher dir since the kernel
	// looked): refuse it before reading. The stat serves the header
	// read too (fdFile.opened).
	st := new(unix.Stat_t)
	if err := unix.Fstat(c.fd, st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(c.fd)
		if err != nil {
			return nil, nil, 0, gofs.ToErrno(err)
		}
		return nil, nil, 0, syscall.ESTALE
	}
	c.st = st
	of, errno := n.openBacking(c, true)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if flags&unix.O_TRUNC != 0 && of.size() > 0 {
		// An existing file (created by someone else since the kernel
		// looked): cut it as O_TRUNC asks.
		errno := n.dropPrivs(ctx, of)
		if errno == 0 {
			errno = n.truncateOf(of, 0)
		}
		if errno != 0 {
			of.close()
			return nil, nil, 0, errno
		}
	}
	if n.needsChown(ctx) {
		// By the descriptor: the name may no longer be the file.
		if errno := n.chownToCaller(ctx, fd, c.fd, st); errno != 0 {
			of.close()
			return nil, nil, 0, errno
		}
	}
	if err := unix.Fstat(c.fd, st); err != nil {
		of.close()
		return nil, nil, 0, gofs.ToErrno(err)
	}
	n.r.fillAttr(st, &out.Attr)
	child := n.newChild(ctx, st)
	cn := child.Operations().(*Node)
	of.back.node = cn // for journal hints: the file, not its directory
	cn.mu.Lock()
	if cn.open != nil { // the inode was already open through another name
		cn.open.refs++
		shared := cn.open
		cn.mu.Unlock()
		of.close()
		return child, &handle{n: cn, of: shared}, 0, 0
	}
	of.refs = 1
	cn.open = of
	cn.mu.Unlock()
	return child, &handle{n: cn, of: of}, 0, 0
}

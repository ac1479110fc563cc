package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

var (
	_ = (gofs.NodeGetxattrer)((*Node)(nil))
	_ = (gofs.NodeSetxattrer)((*Node)(nil))
	_ = (gofs.NodeListxattrer)((*Node)(nil))
	_ = (gofs.NodeRemovexattrer)((*Node)(nil))
)

// Extended attributes pass through to the backing object, unencrypted
// (docs/FORMAT.md lists them among what leaks).

// Getxattr reads an extended attribute.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	p, errno := n.procPath()
	if errno != 0 {
		return 0, errno
	}
	sz, err := unix.Lgetxattr(p, attr, dest)
	return uint32(max(sz, 0)), gofs.ToErrno(err)
}

// Setxattr writes an extended attribute.
func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	p, errno := n.procPath()
	if errno != 0 {
		return errno
	}
	return gofs.ToErrno(unix.Lsetxattr(p, attr, data, int(flags)))
}

// Listxattr lists extended attribute names.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	p, errno := n.procPath()
	if errno != 0 {
		return 0, errno
	}
	sz, err := unix.Llistxattr(p, dest)
	return uint32(max(sz, 0)), gofs.ToErrno(err)
}

// Removexattr removes an extended attribute.
func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	p, errno := n.procPath()
	if errno != 0 {
		return errno
	}
	return gofs.ToErrno(unix.Lremovexattr(p, attr))
}

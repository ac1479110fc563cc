package fs

import (
	"context"
	"fmt"
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

// Extended attributes are off unless the mount asks for them
// (Options.Xattr): they would be stored in plaintext. When on, they pass
// through to the backing object, unencrypted (docs/FORMAT.md lists them
// among what leaks). A directory is reached
// through its /proc/self/fd link, which the calls must follow; anything
// else by its name under its parent's link, which they must not (a
// symlink's own attributes), outside renames' windows (renames.go).

func (n *Node) xattrPath() (path string, follow bool, errno syscall.Errno) {
	if n.IsDir() {
		fd, errno := n.dir()
		return fmt.Sprintf("/proc/self/fd/%d", fd), true, errno
	}
	p, errno := n.procPath()
	return p, false, errno
}

// capabilityAttr is the attribute the kernel reads before every write to
// see whether the write must drop file capabilities.
const capabilityAttr = "security.capability"

// Getxattr reads an extended attribute. That a file has no
// security.capability is remembered until an attribute of it changes
// (through the mount: the cipher dir must not change behind it), which
// spares a lookup per write.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if !n.r.opts.Xattr {
		return 0, syscall.ENOSYS
	}
	if attr == capabilityAttr && n.noCap.Load() {
		return 0, syscall.ENODATA
	}
	sz, errno := n.getxattr(attr, dest)
	if attr == capabilityAttr && errno == syscall.ENODATA {
		n.noCap.Store(true)
	}
	return sz, errno
}

func (n *Node) getxattr(attr string, dest []byte) (uint32, syscall.Errno) {
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	p, follow, errno := n.xattrPath()
	if errno != 0 {
		return 0, errno
	}
	get := unix.Lgetxattr
	if follow {
		get = unix.Getxattr
	}
	sz, err := get(p, attr, dest)
	return uint32(max(sz, 0)), gofs.ToErrno(err)
}

// Setxattr writes an extended attribute.
func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if !n.r.opts.Xattr {
		return syscall.ENOSYS
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	n.noCap.Store(false)
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	p, follow, errno := n.xattrPath()
	if errno != 0 {
		return errno
	}
	if follow {
		return gofs.ToErrno(unix.Setxattr(p, attr, data, int(flags)))
	}
	return gofs.ToErrno(unix.Lsetxattr(p, attr, data, int(flags)))
}

// Listxattr lists extended attribute names.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if !n.r.opts.Xattr {
		return 0, syscall.ENOSYS
	}
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	p, follow, errno := n.xattrPath()
	if errno != 0 {
		return 0, errno
	}
	list := unix.Llistxattr
	if follow {
		list = unix.Listxattr
	}
	sz, err := list(p, dest)
	return uint32(max(sz, 0)), gofs.ToErrno(err)
}

// Removexattr removes an extended attribute.
func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if !n.r.opts.Xattr {
		return syscall.ENOSYS
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	n.noCap.Store(false)
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	p, follow, errno := n.xattrPath()
	if errno != 0 {
		return errno
	}
	if follow {
		return gofs.ToErrno(unix.Removexattr(p, attr))
	}
	return gofs.ToErrno(unix.Lremovexattr(p, attr))
}

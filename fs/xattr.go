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
// among what leaks).

// xattrCall runs call with a path to the node's backing object: a
// directory's /proc/self/fd link, which the call must follow; anything
// else by its name under its parent's link, which it must not (a
// symlink's own attributes), outside renames' windows (renames.go).
func (n *Node) xattrCall(call func(path string, follow bool) (int, error)) (uint32, syscall.Errno) {
	n.r.renames.mu.RLock()
	defer n.r.renames.mu.RUnlock()
	var path string
	follow := n.IsDir()
	if follow {
		fd, errno := n.dir()
		if errno != 0 {
			return 0, errno
		}
		path = fmt.Sprintf("/proc/self/fd/%d", fd)
	} else {
		pfd, name, errno := n.loc()
		if errno != 0 {
			return 0, errno
		}
		path = fmt.Sprintf("/proc/self/fd/%d/%s", pfd, name)
	}
	sz, err := call(path, follow)
	return uint32(max(sz, 0)), gofs.ToErrno(err)
}

// capabilityAttr is the attribute the kernel reads before every write to
// see whether the write must drop file capabilities.
const capabilityAttr = "security.capability"

// Getxattr reads an extended attribute. That a file has no
// security.capability is remembered until an attribute of it changes
// (through the mount: the cipher dir must not change behind it), which
// spares a lookup per write.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if attr == ReloadAttr && n.r.opts.ReadOnly {
		// A read-only mount takes no setxattr (the kernel refuses it):
		// reading the attribute asks it to reload.
		_, errno := n.admin(ctx, attr)
		return 0, errno
	}
	if !n.r.opts.Xattr {
		if n.r.opts.Admin != nil && n.r.opts.ReadOnly {
			// ENOSYS would make the kernel stop sending every getxattr,
			// the reload request too, for the life of the mount; a
			// read-only mount has no writes for it to spare.
			return 0, syscall.EOPNOTSUPP
		}
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
	return n.xattrCall(func(p string, follow bool) (int, error) {
		if follow {
			return unix.Getxattr(p, attr, dest)
		}
		return unix.Lgetxattr(p, attr, dest)
	})
}

// Setxattr writes an extended attribute.
func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if handled, errno := n.admin(ctx, attr); handled {
		return errno
	}
	if !n.r.opts.Xattr {
		if n.r.opts.Admin != nil {
			// ENOSYS would make the kernel stop sending every setxattr,
			// the Admin ones too, for the life of the mount.
			return syscall.EOPNOTSUPP
		}
		return syscall.ENOSYS
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	n.noCap.Store(false)
	_, errno := n.xattrCall(func(p string, follow bool) (int, error) {
		if follow {
			return 0, unix.Setxattr(p, attr, data, int(flags))
		}
		return 0, unix.Lsetxattr(p, attr, data, int(flags))
	})
	return errno
}

// Listxattr lists extended attribute names.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if !n.r.opts.Xattr {
		return 0, syscall.ENOSYS
	}
	return n.xattrCall(func(p string, follow bool) (int, error) {
		if follow {
			return unix.Listxattr(p, dest)
		}
		return unix.Llistxattr(p, dest)
	})
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
	_, errno := n.xattrCall(func(p string, follow bool) (int, error) {
		if follow {
			return 0, unix.Removexattr(p, attr)
		}
		return 0, unix.Lremovexattr(p, attr)
	})
	return errno
}

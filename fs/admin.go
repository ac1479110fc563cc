package fs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

// Admin is what the owner of a mount may ask of its daemon through the
// mount, as extended attributes (kmsfs rewrap on a mounted volume): the
// volume package implements it.
type Admin interface {
	// Reload rereads the volume's approved configuration and makes new
	// files use its keys.
	Reload(ctx context.Context) error
	// RewrapFile rewrites f's header with stanzas for the volume's keys.
	RewrapFile(ctx context.Context, f *envelope.File) error
}

// The Admin attributes: see volconf.ReloadAttr.
const (
	ReloadAttr = volconf.ReloadAttr
	RewrapAttr = volconf.RewrapAttr
)

// adminTimeout bounds a reload, which opens key sources.
const adminTimeout = 2 * DefaultKeyTimeout

// admin serves a Setxattr of an Admin attribute; handled is false for any
// other attribute.
func (n *Node) admin(ctx context.Context, attr string) (handled bool, errno syscall.Errno) {
	if attr != ReloadAttr && attr != RewrapAttr {
		return false, 0
	}
	a := n.r.opts.Admin
	if a == nil {
		return true, syscall.EOPNOTSUPP
	}
	if fc, ok := fuse.FromContext(ctx); ok && fc.Uid != 0 && int(fc.Uid) != os.Geteuid() {
		n.r.log.WithFields(map[string]any{"op": attr, "path": n.Path(nil), "uid": fc.Uid}).
			Warn("refused: only root and the user the mount runs as may ask the mount to reload or rewrap")
		return true, syscall.EPERM
	}
	if attr == ReloadAttr {
		if !n.isRoot() {
			return true, syscall.EINVAL
		}
		c, cancel := context.WithTimeout(context.Background(), adminTimeout)
		defer cancel()
		if err := a.Reload(c); err != nil {
			return true, n.fail("reload", err)
		}
		n.r.log.Info("reloaded the volume's keys")
		return true, 0
	}
	if n.r.opts.ReadOnly {
		return true, syscall.EROFS
	}
	if n.StableAttr().Mode&syscall.S_IFMT != syscall.S_IFREG {
		return true, syscall.EINVAL
	}
	of, errno := n.acquire(true)
	if errno != 0 {
		return true, errno
	}
	defer n.release(of)
	of.mu.Lock()
	defer of.mu.Unlock()
	switch {
	case of.bad != nil:
		return true, n.fail("rewrap", of.bad)
	case of.ef == nil:
		return true, 0 // no header yet: the first write makes one with the new keys
	}
	kctx, cancel := n.r.keyContext()
	defer cancel()
	if err := a.RewrapFile(kctx, of.ef); err != nil {
		return true, n.fail("rewrap", err)
	}
	return true, 0
}

package fs

import (
	"context"
	"fmt"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

var (
	_ = (gofs.NodeLookuper)((*Node)(nil))
	_ = (gofs.NodeMkdirer)((*Node)(nil))
	_ = (gofs.NodeMknoder)((*Node)(nil))
	_ = (gofs.NodeRmdirer)((*Node)(nil))
	_ = (gofs.NodeUnlinker)((*Node)(nil))
	_ = (gofs.NodeRenamer)((*Node)(nil))
	_ = (gofs.NodeLinker)((*Node)(nil))
	_ = (gofs.NodeSymlinker)((*Node)(nil))
	_ = (gofs.NodeReadlinker)((*Node)(nil))
	_ = (gofs.NodeReaddirer)((*Node)(nil))
	_ = (gofs.NodeOpendirHandler)((*Node)(nil))
	_ = (gofs.NodeFsyncer)((*Node)(nil))

	_ = (gofs.FileReaddirenter)((*dirHandle)(nil))
	_ = (gofs.FileSeekdirer)((*dirHandle)(nil))
	_ = (gofs.FileReleasedirer)((*dirHandle)(nil))
)

// OpendirHandle opens a directory handle, for an OPENDIR or for listings
// (which declines OPENDIR where it can): the directory's own descriptor
// now, so that an open directory stays reachable (fstat, fsync) even if it
// is renamed over, and the stream on the first read. An OPENDIR lets the
// kernel cache the listing (FOPEN_CACHE_DIR; go-fuse adds KEEP_CACHE), as
// it does by itself without OPENDIR: the kernel drops it when the
// directory changes through the mount or its mtime moves, and the cipher
// dir must not change behind the mount anyway (as for the entry and
// attribute caches).
func (n *Node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if _, errno := n.dir(); errno != 0 {
		return nil, 0, errno
	}
	return &dirHandle{n: n}, fuse.FOPEN_CACHE_DIR, 0
}

// dirHandle is an open directory: Readdir's stream, made on first read.
// Lazily, not at opendir: while the kernel serves a listing from its
// cache it sends no READDIR, and the stream (a descriptor opened and
// closed) would be made for nothing. (Returning the stream itself as the
// handle made rm -rf measurably slower and costlier in daemon CPU:
// docs/PERFORMANCE.md.)
type dirHandle struct {
	n  *Node
	mu sync.Mutex
	ds gofs.DirStream
}

func (d *dirHandle) stream(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	if d.ds == nil {
		ds, errno := d.n.Readdir(ctx)
		if errno != 0 {
			return nil, errno
		}
		d.ds = ds
	}
	return d.ds, 0
}

// Readdirent returns the next entry, or nil at the end.
func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ds, errno := d.stream(ctx)
	if errno != 0 || !ds.HasNext() {
		return nil, errno
	}
	e, errno := ds.Next()
	return &e, errno
}

// Seekdir moves the stream to off, where the stream can.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	ds, errno := d.stream(ctx)
	if errno != 0 {
		return errno
	}
	if sd, ok := ds.(gofs.FileSeekdirer); ok {
		return sd.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

// Releasedir closes the stream.
func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ds != nil {
		d.ds.Close()
		d.ds = nil
	}
}

// Fsync flushes a directory (the write-temp, fsync, rename, fsync-dir
// pattern), or a file through its handle.
func (n *Node) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.Fsync(ctx, flags)
	}
	if !n.IsDir() {
		return 0
	}
	fd, errno := n.dir()
	if errno != 0 {
		return errno
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer unix.Close(dfd)
	return gofs.ToErrno(unix.Fsync(dfd))
}

// hidden reports whether name in this directory is kmsfs's own and not
// part of the mount.
func (n *Node) hidden(name string) bool {
	// With encrypted names a plaintext name never reaches them: it is
	// always encrypted, and their backing names are special.
	return n.r.opts.Names == nil && (name == volconf.Name || name == volconf.JournalName || name == volconf.NamesName) && n.isRoot()
}

// Lookup finds a child by name.
func (n *Node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.ENOENT
	}
	fd, nm, errno := n.backing(name)
	if errno != 0 {
		return nil, errno
	}
	var st unix.Stat_t
	if err := unix.Fstatat(fd, nm.Backing, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, gofs.ToErrno(err)
	}
	n.r.plainLinkSize(fd, nm.Backing, &st)
	n.r.fillAttr(&st, &out.Attr)
	return n.newChild(ctx, &st), 0
}

// created finishes a new entry nm of type kind: owner set to the caller
// (when running as root), attributes filled, child node made. On failure
// the entry is removed.
func (n *Node) created(ctx context.Context, fd int, nm names.Name, kind uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	name := nm.Backing
	undo := func() {
		if kind == unix.S_IFDIR {
			n.removeDir(fd, nm)
			return
		}
		var ts targetSide
		if kind == unix.S_IFLNK {
			ts = sideOf(fd, name)
		}
		if unix.Unlinkat(fd, name, 0) == nil {
			n.removeSides(fd, nm, ts)
		}
	}
	var st unix.Stat_t
	var err error
	if n.needsChown(ctx) {
		err = n.chownNew(ctx, fd, name, kind, &st)
	} else {
		err = unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		undo()
		return nil, gofs.ToErrno(err)
	}
	n.r.plainLinkSize(fd, name, &st)
	n.r.fillAttr(&st, &out.Attr)
	return n.newChild(ctx, &st), 0
}

// chownNew gives the new entry name, of type kind, to the caller
// (chownToCaller) through an O_PATH descriptor, so that nothing put in its
// place meanwhile (a symlink) is followed, and fills st after.
func (n *Node) chownNew(ctx context.Context, fd int, name string, kind uint32, st *unix.Stat_t) error {
	ofd, err := unix.Openat(fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(ofd)
	if err := unix.Fstat(ofd, st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != kind {
		return syscall.ESTALE // replaced in the cipher dir since made
	}
	if errno := n.chownToCaller(ctx, fd, ofd, st); errno != 0 {
		return errno
	}
	return unix.Fstat(ofd, st)
}

// needsChown reports whether a new entry made for the caller of ctx must
// be given to the caller (chownToCaller).
func (n *Node) needsChown(ctx context.Context) bool {
	caller, ok := fuse.FromContext(ctx)
	// Otherwise made by the caller's own credentials already (a
	// set-group-ID directory gave it the directory's group, as it must).
	return n.r.asRoot && ok && (caller.Uid != 0 || int(caller.Gid) != n.r.gid)
}

// chownToCaller gives a new entry, held by descriptor obj (open or O_PATH)
// of directory fd and whose stat is st, to the calling user, and to the
// calling group unless the directory is set-group-ID (then the directory's
// group, as the kernel chose). Only a daemon running as root can, and
// needs to (needsChown).
func (n *Node) chownToCaller(ctx context.Context, fd, obj int, st *unix.Stat_t) syscall.Errno {
	if !n.needsChown(ctx) {
		return 0
	}
	caller, _ := fuse.FromContext(ctx)
	gid := int(caller.Gid)
	var dst unix.Stat_t
	if err := unix.Fstat(fd, &dst); err == nil && dst.Mode&unix.S_ISGID != 0 {
		gid = -1
	}
	path := procFd(obj)
	if err := unix.Fchownat(unix.AT_FDCWD, path, int(caller.Uid), gid, 0); err != nil {
		return gofs.ToErrno(err)
	}
	// chown clears set-user-ID and set-group-ID on files; the caller asked
	// for them (the kernel already dropped what it may not have).
	kind := st.Mode & unix.S_IFMT
	if st.Mode&privBits != 0 && kind != unix.S_IFDIR && kind != unix.S_IFLNK {
		return gofs.ToErrno(unix.Fchmodat(unix.AT_FDCWD, path, st.Mode&07777, 0))
	}
	return 0
}

// dirForChange returns the directory descriptor and the backing name
// (backing) for an operation that changes the entry name, refusing
// read-only mounts and kmsfs's own files.
func (n *Node) dirForChange(name string) (int, names.Name, syscall.Errno) {
	if n.r.opts.ReadOnly {
		return -1, names.Name{}, syscall.EROFS
	}
	if n.hidden(name) {
		return -1, names.Name{}, syscall.EPERM
	}
	return n.backing(name)
}

// Mkdir creates a directory.
func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return nil, errno
	}
	if n.r.opts.Names != nil {
		errno = n.mkdirNamed(fd, nm, mode)
	} else {
		errno = gofs.ToErrno(unix.Mkdirat(fd, nm.Backing, mode))
	}
	if errno != 0 {
		return nil, errno
	}
	return n.created(ctx, fd, nm, unix.S_IFDIR, out)
}

// Mknod creates a fifo, socket, device or empty regular file.
func (n *Node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return nil, errno
	}
	if errno := writeLongSide(fd, nm); errno != 0 {
		return nil, errno
	}
	if err := unix.Mknodat(fd, nm.Backing, mode, int(rdev)); err != nil {
		return nil, gofs.ToErrno(err)
	}
	kind := mode & unix.S_IFMT
	if kind == 0 {
		kind = unix.S_IFREG // mknod(2): a regular file
	}
	return n.created(ctx, fd, nm, kind, out)
}

// Symlink creates a symbolic link; its target is stored as given, or
// encrypted with Options.Names.
func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return nil, errno
	}
	stored, side, errno := n.r.encryptTarget(fd, target)
	if errno == 0 {
		errno = writeLongSide(fd, nm)
	}
	if errno == 0 {
		errno = gofs.ToErrno(unix.Symlinkat(stored, fd, nm.Backing))
	}
	if errno != 0 {
		if side != "" {
			unix.Unlinkat(fd, side, 0) // no symlink reads it
		}
		return nil, errno
	}
	return n.created(ctx, fd, nm, unix.S_IFLNK, out)
}

// Readlink returns a symbolic link's target.
func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	fd, _, errno := n.openPath()
	if errno != 0 {
		return nil, errno
	}
	defer unix.Close(fd)
	for size := 256; size <= 1<<20; size *= 4 {
		buf := make([]byte, size)
		m, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		if m < len(buf) {
			return n.plainTarget(buf[:m])
		}
	}
	return nil, syscall.ENAMETOOLONG
}

// Rmdir removes an empty directory.
func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return errno
	}
	n.pinDir(name)
	if n.r.opts.Names != nil {
		return n.rmdirNamed(fd, nm)
	}
	return gofs.ToErrno(unix.Unlinkat(fd, nm.Backing, unix.AT_REMOVEDIR))
}

// Unlink removes a name.
func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return errno
	}
	ts := n.sideBefore(fd, name, nm)
	if err := unix.Unlinkat(fd, nm.Backing, 0); err != nil {
		return gofs.ToErrno(err)
	}
	if n.r.opts.Names != nil {
		n.removeSides(fd, nm, ts)
	}
	return 0
}

// Rename renames, replacing an existing target, with RENAME_NOREPLACE and
// RENAME_EXCHANGE passed through. Headers are bound to files, not names,
// so no key is involved.
func (n *Node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*Node)
	if !ok {
		return syscall.EXDEV
	}
	fd, from, errno := n.dirForChange(name)
	if errno != 0 {
		return errno
	}
	nfd, to, errno := np.dirForChange(newName)
	if errno != 0 {
		return errno
	}
	// A directory that moves (or, at newName, is replaced) gets its own
	// descriptor first: until go-fuse moves the node after the rename, a
	// listing or lookup in it would otherwise open whatever its old name
	// then is.
	n.pinDir(name)
	np.pinDir(newName)
	if n.r.opts.Names != nil {
		return n.renameNamed(fd, from, nfd, to, flags, n.maybeSymlink(name), np.maybeSymlink(newName))
	}
	return gofs.ToErrno(unix.Renameat2(fd, from.Backing, nfd, to.Backing, uint(flags)))
}

// Link makes a hard link to target. The header is bound to the file, not
// its name, so both names read the same content.
func (n *Node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*Node)
	if !ok {
		return nil, syscall.EXDEV
	}
	fd, nm, errno := n.dirForChange(name)
	if errno != 0 {
		return nil, errno
	}
	tfd, tname, errno := t.loc()
	if errno != 0 {
		return nil, errno
	}
	if n.r.opts.Names != nil {
		if errno := linkSides(tfd, tname, fd, nm, t.StableAttr().Mode == unix.S_IFLNK); errno != 0 {
			return nil, errno
		}
	}
	if err := unix.Linkat(tfd, tname, fd, nm.Backing, 0); err != nil {
		return nil, gofs.ToErrno(err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(fd, nm.Backing, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, gofs.ToErrno(err)
	}
	n.r.plainLinkSize(fd, nm.Backing, &st)
	n.r.fillAttr(&st, &out.Attr)
	return n.newChild(ctx, &st), 0
}

// Readdir lists the directory, without kmsfs's own files, and with
// Options.Names, with the names decrypted.
func (n *Node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	fd, errno := n.dir()
	if errno != 0 {
		return nil, errno
	}
	n.mu.Lock()
	id, idErr := n.dirID, n.dirIDErr
	n.mu.Unlock()
	if idErr != nil {
		return nil, syscall.EIO // logged when read (loadDirID)
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(dfd)
	if errno != 0 || (!n.isRoot() && n.r.opts.Names == nil) {
		return ds, errno
	}
	return &hidingStream{ds: ds, n: n, fd: fd, id: id}, 0
}

// hidingStream is a listing without kmsfs's own entries (the root's, or
// with Options.Names every directory's, whose names it decrypts). It
// keeps the cipher dir's own offsets and seeks the underlying stream, so
// that a fresh handle that listings seeks to a listing's offset (see
// listings) resumes it at its place.
type hidingStream struct {
	ds      gofs.DirStream
	n       *Node
	fd      int         // the directory's descriptor, for side files
	id      names.DirID // the directory's ID, with Options.Names
	pending *fuse.DirEntry
	errno   syscall.Errno
}

// show returns the name under which the backing entry backing is listed;
// false leaves it out: kmsfs's own files, and with Options.Names an entry
// whose name does not decrypt (tampered, moved from another directory,
// written under another key), which is logged, never shown under a
// wrong name.
func (h *hidingStream) show(backing string) (string, bool) {
	if h.n.r.opts.Names == nil {
		return backing, !h.n.hidden(backing)
	}
	name, ok, err := h.n.r.decryptEntry(h.fd, h.id, backing)
	if err != nil {
		h.n.r.log.WithFields(map[string]any{"op": "readdir", "path": h.n.Path(nil), "backing": backing}).
			Error(fmt.Sprintf("fs: entry left out of the listing: %v", err))
		return "", false
	}
	return name, ok
}

var _ = (gofs.FileSeekdirer)((*hidingStream)(nil))

// fill reads ahead to the next entry to show, if there is one.
func (h *hidingStream) fill() {
	for h.pending == nil && h.errno == 0 && h.ds.HasNext() {
		e, errno := h.ds.Next()
		if errno != 0 {
			h.errno = errno
			return
		}
		if name, ok := h.show(e.Name); ok {
			e.Name = name
			h.pending = &e
		}
	}
}

func (h *hidingStream) HasNext() bool {
	h.fill()
	return h.pending != nil || h.errno != 0
}

func (h *hidingStream) Next() (fuse.DirEntry, syscall.Errno) {
	h.fill()
	if h.errno != 0 {
		errno := h.errno
		h.errno = 0
		return fuse.DirEntry{}, errno
	}
	e := *h.pending
	h.pending = nil
	return e, 0
}

func (h *hidingStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.pending, h.errno = nil, 0
	return h.ds.(gofs.FileSeekdirer).Seekdir(ctx, off)
}

func (h *hidingStream) Close() { h.ds.Close() }

package fs

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/names"
)

// openFile is the state that all open handles of one inode share: the
// backing descriptor and the envelope File. A backing file of zero bytes
// has no header yet; it gets one (and a data key) on its first write.
type openFile struct {
	refs   int // guarded by Node.mu
	back   *backing
	layout envelope.Layout

	// privs is set while the file may have a set-user-ID or set-group-ID
	// bit, which a change of content by another user clears (dropPrivs):
	// set from the stat of the open and by every change of mode.
	privs atomic.Bool

	mu     sync.RWMutex // guards ef, bad and closed
	ef     *envelope.File
	bad    error // the header could not be opened: reads and writes fail, truncating to 0 repairs
	closed bool
}

func (of *openFile) size() int64 {
	of.mu.RLock()
	defer of.mu.RUnlock()
	if of.ef != nil {
		return of.ef.Size()
	}
	if of.bad == nil {
		return 0 // a file without a header is empty
	}
	if fi, err := of.back.Stat(); err == nil {
		return of.layout.PlainSize(fi.Size())
	}
	return 0
}

// backing is a cipher file descriptor. It offers the envelope space
// reservation and hole punching (envelope.Reserver, Puncher), so that a
// full disk fails a write before any byte of a block lands and the write
// journal stays cheap over holes.
type backing struct {
	*fdFile
	writable bool
	node     *Node
}

// JournalHint tells the write journal where the file is, relative to the
// cipher dir, so that a mount after a crash finds it (journal.RecoverFiles).
// With encrypted names that is the path of backing names: the plaintext
// path would neither be found there nor may it reach the cipher dir.
func (b *backing) JournalHint() string {
	if b.node.r.opts.Names == nil {
		return b.node.Path(nil)
	}
	return b.node.backingPath()
}

// backingPath returns the node's path of backing names relative to the
// cipher dir, or "" (the journal then meets the file when it is next
// opened) for a node unlinked or below a directory whose ID is not at
// hand. It opens nothing: every directory above an open file has had its
// ID read when the file was looked up.
func (n *Node) backingPath() string {
	var parts []string
	cur := &n.Inode
	for !cur.IsRoot() {
		name, parent := cur.Parent()
		if parent == nil {
			return ""
		}
		pn, ok := parent.Operations().(*Node)
		if !ok {
			return ""
		}
		pn.mu.Lock()
		id, err := pn.dirID, pn.dirIDErr
		pn.mu.Unlock()
		if err != nil || (id == names.DirID{} && !pn.isRoot()) {
			return ""
		}
		nm, ok := n.r.names.get(id, name)
		if !ok {
			var eerr error
			if nm, eerr = n.r.opts.Names.Encrypt(id, name); eerr != nil {
				return ""
			}
		}
		parts = append(parts, nm.Backing)
		cur = parent
	}
	slices.Reverse(parts)
	return strings.Join(parts, "/")
}

func (b *backing) WriteAt(p []byte, off int64) (int, error) {
	if !b.writable {
		return 0, syscall.EBADF
	}
	return b.fdFile.WriteAt(p, off)
}

// Reserve allocates backing space for [off, off+n) without changing the size.
func (b *backing) Reserve(off, n int64) error {
	err := unix.Fallocate(int(b.Fd()), unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == unix.EOPNOTSUPP {
		return nil
	}
	return err
}

// ListHoles lists the holes below size, up to 4096 of them.
func (b *backing) ListHoles(size int64) ([][2]int64, error) {
	fd := int(b.Fd())
	var hs [][2]int64
	for off := int64(0); off < size; {
		h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		if h >= size {
			break
		}
		d, err := unix.Seek(fd, h, unix.SEEK_DATA)
		if err == unix.ENXIO {
			d = size
		} else if err != nil {
			return nil, err
		}
		if len(hs) == 4096 {
			return nil, errors.New("too many holes")
		}
		hs = append(hs, [2]int64{h, min(d, size)})
		off = d
	}
	return hs, nil
}

// Punch deallocates [off, off+n), which then reads as zeros.
func (b *backing) Punch(off, n int64) error {
	return unix.Fallocate(int(b.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (b *backing) Sync() error { return unix.Fdatasync(int(b.Fd())) }

// acquire returns the node's shared open state, opening the backing file
// and reading its header if no handle has it open yet. Each acquire is
// paired with a release.
//
// With forWrite, a file whose header cannot be opened (damaged, another
// volume's, key unavailable) is still opened, in a failed state: reads and
// writes return the error, and truncating it to zero (as O_TRUNC and
// "> file" do) replaces it with a fresh empty file.
func (n *Node) acquire(forWrite bool) (*openFile, syscall.Errno) {
	n.mu.Lock()
	if n.open != nil {
		n.open.refs++
		of := n.open
		n.mu.Unlock()
		return of, 0
	}
	n.mu.Unlock()
	c, errno := n.openSelf()
	if errno != 0 {
		return nil, errno
	}
	of, errno := n.openBacking(c, forWrite)
	if errno != 0 {
		return nil, errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.open != nil { // another open won the race
		n.open.refs++
		of.close()
		return n.open, 0
	}
	of.refs = 1
	n.open = of
	return of, 0
}

// cipherFile is a cipher file just opened.
type cipherFile struct {
	fd       int
	name     string
	writable bool
	st       *unix.Stat_t // its stat, if taken
}

// openCipher opens (or with O_CREAT creates) the cipher file name in
// directory pfd: read-write when it can, read-only when only that is
// allowed. The caller checks that it opened a regular file (checkSelfFd,
// or isRegular after a create) before any read or write.
func (n *Node) openCipher(pfd int, name string, extra int, mode uint32) (cipherFile, error) {
	flags := unix.O_RDWR
	if n.r.opts.ReadOnly {
		flags = unix.O_RDONLY
	}
	// O_NOATIME: kmsfs's own reads (headers, read-modify-write) must not
	// move the access time; it is refused for files we do not own.
	// O_NONBLOCK: a FIFO planted in the cipher dir where a file was must
	// not hang the open (read-only it would wait for a writer forever);
	// the type check after refuses it. Regular files ignore the flag.
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOATIME | unix.O_NONBLOCK
	fd, err := unix.Openat(pfd, name, flags|extra, mode)
	if err == unix.EPERM {
		flags &^= unix.O_NOATIME
		fd, err = unix.Openat(pfd, name, flags|extra, mode)
	}
	writable := flags&unix.O_ACCMODE == unix.O_RDWR
	if err != nil && extra == 0 && (err == unix.EACCES || err == unix.EPERM || err == unix.EROFS || err == unix.ETXTBSY) {
		fd, err = unix.Openat(pfd, name, (flags&^unix.O_ACCMODE)|unix.O_RDONLY, 0)
		writable = false
	}
	return cipherFile{fd: fd, name: name, writable: writable}, err
}

// openSelf opens the node's own cipher file (openByName).
func (n *Node) openSelf() (cipherFile, syscall.Errno) {
	var c cipherFile
	_, st, errno := n.openByName(func(pfd int, name string) (int, error) {
		var err error
		c, err = n.openCipher(pfd, name, 0, 0)
		return c.fd, err
	})
	c.st = &st
	return c, errno
}

// openBacking makes the open state of cipher file c, reading its header
// (a key call). A new or empty file gets no header until its first write.
func (n *Node) openBacking(c cipherFile, keepBad bool) (*openFile, syscall.Errno) {
	ff := &fdFile{fd: c.fd, name: c.name, opened: c.st}
	of := &openFile{back: &backing{fdFile: ff, writable: c.writable, node: n}, layout: n.r.layout}
	of.privs.Store(c.st == nil || c.st.Mode&privBits != 0)
	n.r.opened(of)
	kctx, cancel := n.r.keyContext()
	defer cancel()
	ef, err := n.r.vol.Open(kctx, of.back, n.r.opts.Keys)
	ff.opened = nil // Open took it, if it needed it
	if errors.Is(err, envelope.ErrNoHeader) {
		return of, 0 // empty: the header comes with the first write
	}
	if err != nil {
		errno := n.fail("open", err)
		if keepBad && c.writable {
			of.bad = err
			return of, 0
		}
		of.close()
		return nil, errno
	}
	of.ef = ef
	if ef.Recovered() {
		// The journal finished or undid a change a crash interrupted:
		// the size the kernel may have cached from a lookup is stale.
		// (Notifying from inside a request can deadlock, hence go.)
		go n.NotifyContent(0, 0)
	}
	return of, 0
}

// flush writes the header's list of holes if it is behind.
func (of *openFile) flush() {
	of.mu.RLock()
	ef := of.ef
	of.mu.RUnlock()
	if ef == nil {
		return
	}
	if err := ef.Flush(); err != nil && !errors.Is(err, envelope.ErrClosed) {
		of.back.node.r.log.WithFields(map[string]any{"op": "close", "path": of.back.node.Path(nil)}).Error(err.Error())
	}
}

// close closes the file; a second close does nothing.
func (of *openFile) close() {
	of.mu.Lock()
	if of.closed {
		of.mu.Unlock()
		return
	}
	of.closed = true
	if of.ef != nil {
		if err := of.ef.Close(); err != nil {
			of.back.node.r.log.WithFields(map[string]any{"op": "close", "path": of.back.node.Path(nil)}).Error(err.Error())
		}
		of.ef = nil
	}
	of.mu.Unlock()
	of.back.Close()
	of.back.node.r.closed(of)
}

// opened and closed track the open files, so that an unmount closes the
// ones whose RELEASE the kernel never sent: close(2) does not wait for
// RELEASE, and an unmount right after drops the ones still queued.
func (r *root) opened(of *openFile) {
	r.openMu.Lock()
	r.opens[of] = struct{}{}
	r.openMu.Unlock()
}

func (r *root) closed(of *openFile) {
	r.openMu.Lock()
	delete(r.opens, of)
	r.openMu.Unlock()
}

// closeOpenFiles closes every file still open; for the unmounted root.
func (r *root) closeOpenFiles() {
	r.openMu.Lock()
	ofs := make([]*openFile, 0, len(r.opens))
	for of := range r.opens {
		ofs = append(ofs, of)
	}
	r.openMu.Unlock()
	for _, of := range ofs {
		of.close()
	}
}

// release drops one reference to the shared state and closes it with the
// last. The last one first writes what the file's header still lacks,
// under n.mu: an open that comes meanwhile waits for it instead of
// reading the header from the cipher file while this state may still
// write it.
func (n *Node) release(of *openFile) {
	n.mu.Lock()
	of.refs--
	last := of.refs == 0
	if last && n.open == of {
		of.flush()
		n.open = nil
	}
	n.mu.Unlock()
	if last {
		of.close()
	}
}

func (n *Node) openState() *openFile {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.open
}

// acquireExisting returns a reference to the shared state if the node is
// open, or nil. Pair it with release.
func (n *Node) acquireExisting() *openFile {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.open != nil {
		n.open.refs++
	}
	return n.open
}

// file returns the envelope File, giving a headerless file its header and
// data key first when forWrite is set; it returns nil for a headerless
// file that is only read.
func (n *Node) file(of *openFile, forWrite bool) (*envelope.File, syscall.Errno) {
	of.mu.RLock()
	ef, bad := of.ef, of.bad
	of.mu.RUnlock()
	if bad != nil {
		return nil, errnoOf(bad)
	}
	if ef != nil || !forWrite {
		return ef, 0
	}
	of.mu.Lock()
	defer of.mu.Unlock()
	if of.ef != nil {
		return of.ef, 0
	}
	if !of.back.writable {
		return nil, syscall.EBADF
	}
	kctx, cancel := n.r.keyContext()
	defer cancel()
	dk, stanzas, err := n.r.opts.Keys.NewDataKey(kctx)
	if err != nil {
		return nil, n.fail("create header", err)
	}
	ef, err = n.r.vol.Create(of.back, dk, stanzas)
	clear(dk)
	if err != nil {
		return nil, n.fail("create header", err)
	}
	of.ef = ef
	return ef, 0
}

// truncate sets the plaintext size, through handle f's state if given,
// for the caller of ctx (dropPrivs).
func (n *Node) truncate(ctx context.Context, f gofs.FileHandle, size int64) syscall.Errno {
	if n.IsDir() {
		return syscall.EISDIR
	}
	var of *openFile
	if h, ok := f.(*handle); ok {
		of = h.of
	} else {
		var errno syscall.Errno
		if of, errno = n.acquireForTruncate(ctx, size); errno != 0 || of == nil {
			return errno
		}
		defer n.release(of)
	}
	if errno := n.dropPrivs(ctx, of); errno != 0 {
		return errno
	}
	return n.truncateOf(of, size)
}

// truncateOf sets the plaintext size of an open state.
func (n *Node) truncateOf(of *openFile, size int64) syscall.Errno {
	old := of.size()
	of.mu.Lock()
	if of.bad != nil && size == 0 {
		// A file whose header could not be opened is replaced by a
		// fresh empty one: its old content was unreadable anyway.
		if err := of.back.Truncate(0); err != nil {
			of.mu.Unlock()
			return gofs.ToErrno(err)
		}
		of.bad = nil
	}
	of.mu.Unlock()
	if size != 0 || of.size() != 0 {
		ef, errno := n.file(of, true)
		if errno != 0 {
			return errno
		}
		if err := ef.Truncate(size); err != nil {
			return n.fail("truncate", err)
		}
		// The header's list of holes is written now, not when the last
		// handle lets go: that write would change the file's ctime after
		// the truncate has answered (a close's RELEASE may come later).
		if err := ef.Flush(); err != nil {
			return n.fail("truncate", err)
		}
	}
	if size != old {
		return 0 // changing the backing file set its mtime and ctime
	}
	// truncate(2) sets mtime and ctime even when the size stays the same;
	// the backing file saw no change then, so say it.
	now := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_NOW}}
	return gofs.ToErrno(unix.UtimesNanoAt(unix.AT_FDCWD, procFd(of.back.fd), now, 0))
}

// acquireForTruncate is acquire for a truncate without a handle. Cutting
// a file that nobody has open to zero needs no key: the backing file is
// emptied, and the next write gives it a fresh header. It returns a nil
// state when that is done.
func (n *Node) acquireForTruncate(ctx context.Context, size int64) (*openFile, syscall.Errno) {
	if size == 0 && n.openState() == nil {
		// Opened first and cut once it is known to be this file (a FIFO
		// in its place would block the open without O_NONBLOCK).
		fd, st, errno := n.openByName(func(pfd int, name string) (int, error) {
			return unix.Openat(pfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		})
		if errno != 0 {
			return nil, errno
		}
		defer unix.Close(fd)
		if errno := dropPrivsFd(ctx, fd, &st); errno != 0 {
			return nil, errno
		}
		return nil, gofs.ToErrno(unix.Ftruncate(fd, 0))
	}
	return n.acquire(true)
}

// fail logs a failed operation on the node and returns its errno.
func (n *Node) fail(op string, err error) syscall.Errno {
	errno := errnoOf(err)
	fields := map[string]any{"op": op, "path": n.Path(nil), "errno": errno.Error()}
	var be *envelope.BlockError
	if errors.As(err, &be) {
		fields["block"] = be.Block
	}
	n.r.log.WithFields(fields).Error(err.Error())
	if obs := n.r.opts.Observer; obs != nil && errors.Is(err, envelope.ErrAuth) {
		obs.AuthFailure()
	}
	return errno
}

// errnoOf maps an error to the errno a caller sees.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	switch {
	case isKeyErr(err):
		return keyErrno(err)
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.As(err, &e):
		return e
	}
	return syscall.EIO
}

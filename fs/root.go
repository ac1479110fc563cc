package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/keysource"
)

// DefaultCacheTimeout is how long the kernel caches entries, attributes
// and negative lookups by default.
const DefaultCacheTimeout = time.Second

// DefaultKeyTimeout bounds one key-source call made for an open or create.
const DefaultKeyTimeout = 30 * time.Second

// Keys supplies data keys: the keysource data-key manager implements it.
// Both methods must be safe for concurrent use; returned keys belong to the
// caller.
type Keys interface {
	envelope.KeyUnwrapper
	NewDataKey(ctx context.Context) ([]byte, []keysource.Stanza, error)
}

// Options configure a kmsfs filesystem.
type Options struct {
	// CipherDir is the backing directory.
	CipherDir string
	// Volume is the cipher dir's envelope volume (layout, volume ID).
	Volume *envelope.Volume
	// Keys unwraps the data keys of existing files and supplies new ones.
	Keys Keys
	// Log receives one line per failed operation; nil discards.
	Log *logrus.Entry
	// ReadOnly refuses every change.
	ReadOnly bool
	// Xattr passes extended attributes through to the backing objects,
	// unencrypted. Without it every xattr call fails with ENOSYS, which
	// the kernel remembers for the life of the mount (callers see
	// EOPNOTSUPP), so it also stops asking for security.capability
	// before every write.
	Xattr bool
	// KeyTimeout bounds a key call made for an open or create; 0 means
	// DefaultKeyTimeout.
	KeyTimeout time.Duration
	// Admin, if set, serves the mount owner's requests (ReloadAttr,
	// RewrapAttr).
	Admin Admin
	// Names, if set, encrypts the names of entries and the targets of
	// symbolic links (docs/FORMAT.md, "Encrypted names"); nil keeps
	// them in the clear. It must be safe for concurrent use.
	Names *names.Codec
	// RootDirID is the root directory's ID with Names
	// (names.RootDirID of the volume ID).
	RootDirID names.DirID
	// Observer, if set, is told of every request, the bytes read and
	// written, files opened and released, and authentication failures
	// (for metrics); nil observes nothing and costs nothing.
	Observer Observer
}

// root holds what every node of one mount shares.
type root struct {
	opts   Options
	vol    *envelope.Volume
	layout envelope.Layout
	log    *logrus.Entry
	fd     int // the cipher dir, open for the life of the mount
	dev    uint64
	asRoot bool // the daemon runs as root: new files are chowned to the caller
	gid    int  // the daemon's effective group

	unmounted     chan struct{} // closed once the unmounted root has closed its descriptors
	unmountedOnce sync.Once

	openMu sync.Mutex
	opens  map[*openFile]struct{} // files open now

	renames renameGate // by-name resolutions against renames (renames.go)
	names   nameCache  // backing names of plaintext names, with Options.Names
}

// NewRoot opens the cipher dir and returns the root node of its
// filesystem. Mount it with Mount or go-fuse's fs.Mount; the root's
// directory descriptor is closed when the filesystem is unmounted.
func NewRoot(o Options) (gofs.InodeEmbedder, error) {
	if o.Volume == nil || o.Keys == nil {
		return nil, errors.New("fs: options need a Volume and Keys")
	}
	fd, err := unix.Open(o.CipherDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fs: open cipher dir %s: %w", o.CipherDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fs: stat cipher dir %s: %w", o.CipherDir, err)
	}
	if o.KeyTimeout <= 0 {
		o.KeyTimeout = DefaultKeyTimeout
	}
	log := o.Log
	if log == nil {
		l := logrus.New()
		l.Out = discard{}
		log = logrus.NewEntry(l)
	}
	r := &root{opts: o, vol: o.Volume, layout: o.Volume.Layout(), log: log, fd: fd, dev: uint64(st.Dev), asRoot: os.Geteuid() == 0, gid: os.Getegid(),
		unmounted: make(chan struct{}), opens: map[*openFile]struct{}{}}
	return &Node{r: r, dirfd: fd, dirID: o.RootDirID}, nil
}

// keyContext bounds one key call by KeyTimeout. It is deliberately not
// the FUSE request's context: the kernel interrupts a request whenever the
// calling thread takes a signal (Go programs get SIGURG for preemption all
// the time), and the unwrap would be thrown away and redone on every
// restart of the system call. The kernel waits for the answer anyway.
//
// Its timer starts only if the key call waits for something (asks for
// Done): the data-key cache answers most opens without looking at the
// context, and a timer per open was a tenth of an open's time.
func (r *root) keyContext() (context.Context, context.CancelFunc) {
	c := &lazyDeadline{deadline: time.Now().Add(r.opts.KeyTimeout)}
	return c, c.cancel
}

// lazyDeadline is context.WithDeadline(context.Background(), deadline)
// that makes the underlying context on first use of Done.
type lazyDeadline struct {
	deadline time.Time
	once     sync.Once
	ctx      context.Context
	stop     context.CancelFunc
}

func (c *lazyDeadline) init() {
	c.once.Do(func() { c.ctx, c.stop = context.WithDeadline(context.Background(), c.deadline) })
}

func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *lazyDeadline) Value(key any) any           { return nil }

func (c *lazyDeadline) Done() <-chan struct{} {
	c.init()
	return c.ctx.Done()
}

func (c *lazyDeadline) Err() error {
	c.init()
	return c.ctx.Err()
}

// cancel releases the timer, if there is one, and ends the context.
func (c *lazyDeadline) cancel() {
	unused := false
	c.once.Do(func() { c.ctx, c.stop, unused = canceled, func() {}, true })
	if !unused {
		c.stop()
	}
}

var canceled = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// MountOptions returns the go-fuse options kmsfs mounts with: the FUSE
// options extra, plus nosuid and nodev unless extra says suid or dev, plus
// default_permissions when other users may enter (allowOther); entry and
// attribute caching of one second, large requests.
//
// kmsfs checks no permissions itself: without default_permissions the
// kernel would let any user read, write and chmod any file. And whoever
// controls the cipher dir could plant a set-user-ID program or a device
// node, both honoured without nosuid and nodev (fusermount3 sets them for
// ordinary users; a mount by root must ask).
func MountOptions(fsName string, extra []string, allowOther bool) *gofs.Options {
	sec := DefaultCacheTimeout
	opts := slices.Clone(extra)
	if allowOther && !slices.Contains(opts, "default_permissions") {
		opts = append(opts, "default_permissions")
	}
	for _, o := range [][2]string{{"nosuid", "suid"}, {"nodev", "dev"}} {
		if !slices.Contains(opts, o[0]) && !slices.Contains(opts, o[1]) {
			opts = append(opts, o[0])
		}
	}
	return &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:       fsName,
			Name:         "kmsfs",
			AllowOther:   allowOther,
			Options:      opts,
			MaxWrite:     1 << 20,
			MaxReadAhead: ReadAhead,
			DirectMount:  true,
		},
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &sec,
		NullPermissions: true,
	}
}

// Mount mounts the filesystem of o at mountpoint and returns the running
// server; Unmount it (or fusermount3 -u) to stop. It sets the process
// umask to 0: the kernel has applied the caller's umask already, and a
// second one would strip modes the caller asked for.
func Mount(mountpoint string, o Options, mo *gofs.Options) (*Server, error) {
	rootNode, err := NewRoot(o)
	if err != nil {
		return nil, err
	}
	syscall.Umask(0)
	if mo == nil {
		mo = MountOptions("kmsfs", nil, false)
	}
	noOpendir := stableDirOffsets(rootNode.(*Node).r.fd)
	srv, err := mount(mountpoint, rootNode, mo, noOpendir)
	if err != nil && mo.DirectMount {
		// Not root, or no direct mount: let fusermount3 do it.
		mo.DirectMount = false
		srv, err = mount(mountpoint, rootNode, mo, noOpendir)
	}
	if err != nil {
		unix.Close(rootNode.(*Node).dirfd)
		return nil, fmt.Errorf("fs: mount %s: %w", mountpoint, err)
	}
	if err := setReadAhead(mountpoint, mo.MaxReadAhead); err != nil {
		rootNode.(*Node).r.log.WithError(err).Debug("read-ahead left at the kernel's default")
	}
	return &Server{Server: srv, unmounted: rootNode.(*Node).r.unmounted}, nil
}

// mount is gofs.Mount, with listings if noOpendir, and renames between
// the server and the node bridge.
func mount(mountpoint string, root gofs.InodeEmbedder, mo *gofs.Options, noOpendir bool) (*fuse.Server, error) {
	var raw fuse.RawFileSystem = &renames{RawFileSystem: gofs.NewNodeFS(root, mo), gate: &root.(*Node).r.renames}
	if noOpendir {
		raw = newListings(raw) // outside renames: its drops need no gate
	}
	if obs := root.(*Node).r.opts.Observer; obs != nil {
		raw = &observed{RawFileSystem: raw, obs: obs}
	}
	srv, err := fuse.NewServer(raw, mountpoint, &mo.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	return srv, nil
}

// ReadAhead is the read-ahead window (MountOptions' MaxReadAhead) that a
// mount by root sets for itself.
// The kernel caps a FUSE mount's window at its default (128 KiB), whatever
// the filesystem offers, so sequential reads would arrive as 128 KiB
// requests. It splits a larger window into READs of at most 1 MiB
// (max_pages) and sends them together: at 4 MiB, about four are in flight
// and both cores open blocks of different requests, where at 1 MiB two
// were and the daemon waited between them (docs/PERFORMANCE.md has the
// figures). The kernel ramps the window up only for reads it sees to be
// sequential.
const ReadAhead = 4 << 20

// setReadAhead sets the mount's read-ahead window to n bytes. Only root
// may write the setting.
func setReadAhead(mountpoint string, n int) error {
	if n <= 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(fmt.Sprintf("%d\n", n>>10)), 0)
}

// Server is a mounted kmsfs filesystem: the go-fuse server, whose Wait
// also waits until the filesystem has let go of the cipher dir.
type Server struct {
	*fuse.Server
	unmounted <-chan struct{}
}

// Wait waits until the filesystem is unmounted and has closed every
// descriptor it held into the cipher dir. (go-fuse's own Wait returns
// before it tells the filesystem of the unmount.)
func (s *Server) Wait() {
	s.Server.Wait()
	<-s.unmounted
}

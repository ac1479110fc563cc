// Command loopbackfs is the yardstick of the filesystem benchmark
// (internal/fsbench): a plain go-fuse loopback (fs.NewLoopbackRoot) whose
// file data goes through this daemon.
//
//	loopbackfs [flags] BACKINGDIR MOUNTPOINT
//
// go-fuse offers FUSE passthrough for every loopback file: its bridge asks
// the file handle for a backing descriptor (fs.FilePassthroughFder, see
// go-fuse v2.12.1 fs/bridge.go, rawBridge.addBackingID) and, on kernels
// with CAP_PASSTHROUGH, registers it so that the kernel reads and writes
// the backing file itself, bypassing the daemon. Here every file handle is
// wrapped in a type whose PassthroughFd reports false, which go-fuse
// documents as "passthrough will not be used for this file" (fs/api.go,
// FilePassthroughFder). The mount options stay those of kmsfs where they
// are generic, so the two daemons are compared on equal terms.
//
// It runs in the foreground, prints one line to stdout once mounted (the
// options it mounted with), unmounts on SIGINT or SIGTERM, and prints on
// exit, to stderr, how many reads and writes it served:
//
//	loopbackfs: served reads=N read_bytes=N writes=N write_bytes=N
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// counters are the data requests the daemon served; safe for concurrent use.
type counters struct {
	reads, readBytes, writes, writeBytes atomic.Int64
}

// wrote counts a write request of n bytes.
func (c *counters) wrote(n uint32) {
	c.writes.Add(1)
	c.writeBytes.Add(int64(n))
}

// node is a loopback node whose files never offer passthrough.
type node struct {
	*fs.LoopbackNode
	c *counters
}

var _ = (fs.NodeWrapChilder)((*node)(nil))

// WrapChild wraps every node the loopback creates, so that its opens and
// creates go through the methods below.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), c: n.c}
}

var _ = (fs.NodeOpener)((*node)(nil))

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags)
	return n.wrap(fh), fuseFlags, errno
}

var _ = (fs.NodeCreater)((*node)(nil))

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ino, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return ino, n.wrap(fh), fuseFlags, errno
}

func (n *node) wrap(fh fs.FileHandle) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return &file{LoopbackFile: lf, c: n.c}
	}
	return fh
}

// file is a loopback file that serves its data through the daemon.
type file struct {
	*fs.LoopbackFile
	c *counters
}

var _ = (fs.FilePassthroughFder)((*file)(nil))

// PassthroughFd reports that this file has no backing descriptor for the
// kernel: go-fuse then serves its reads and writes in the daemon.
func (f *file) PassthroughFd() (int, bool) { return -1, false }

var _ = (fs.FileReader)((*file)(nil))

func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	res, errno := f.LoopbackFile.Read(ctx, buf, off)
	if errno == 0 {
		f.c.reads.Add(1)
		f.c.readBytes.Add(int64(res.Size()))
	}
	return res, errno
}

var _ = (fs.FileWriter)((*file)(nil))

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, errno := f.LoopbackFile.Write(ctx, data, off)
	f.c.wrote(n)
	return n, errno
}

var _ = (fs.FileWritever)((*file)(nil))

func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	n, errno := f.LoopbackFile.Writev(ctx, data, off)
	f.c.wrote(n)
	return n, errno
}

func main() {
	k := kfs.MountOptions("", nil, false) // the defaults are kmsfs's
	maxWrite := flag.Int("max-write", k.MaxWrite, "FUSE MaxWrite in bytes")
	maxReadAhead := flag.Int("max-readahead", k.MaxReadAhead, "FUSE MaxReadAhead in bytes")
	entry := flag.Duration("entry-timeout", *k.EntryTimeout, "entry cache timeout")
	attr := flag.Duration("attr-timeout", *k.AttrTimeout, "attribute cache timeout")
	negative := flag.Duration("negative-timeout", *k.NegativeTimeout, "negative entry cache timeout")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] BACKINGDIR MOUNTPOINT\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Arg(1), *maxWrite, *maxReadAhead, *entry, *attr, *negative); err != nil {
		fmt.Fprintln(os.Stderr, "loopbackfs:", err)
		os.Exit(1)
	}
}

func run(backing, mnt string, maxWrite, maxReadAhead int, entry, attr, negative time.Duration) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return err
	}
	c := &counters{}
	top := &node{LoopbackNode: root.(*fs.LoopbackNode), c: c}
	top.RootData.RootNode = top
	// As kmsfs: the kernel has applied the caller's umask already.
	syscall.Umask(0)
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:       backing,
			Name:         "loopbackfs",
			MaxWrite:     maxWrite,
			MaxReadAhead: maxReadAhead,
			DirectMount:  true,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
	}
	srv, err := fs.Mount(mnt, top, opts)
	if err != nil {
		opts.DirectMount = false // not root: let fusermount3 mount
		if srv, err = fs.Mount(mnt, top, opts); err != nil {
			return fmt.Errorf("mount %s: %w", mnt, err)
		}
	}
	fmt.Printf("loopbackfs: mounted %s on %s: MaxWrite=%d MaxReadAhead=%d DirectMount=%t EntryTimeout=%v AttrTimeout=%v NegativeTimeout=%v passthrough=off\n",
		backing, mnt, maxWrite, maxReadAhead, opts.DirectMount, entry, attr, negative)
	go func() {
		s := <-sig
		if err := srv.Unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "loopbackfs: %v: unmount: %v\n", s, err)
		}
	}()
	srv.Wait()
	fmt.Fprintf(os.Stderr, "loopbackfs: served reads=%d read_bytes=%d writes=%d write_bytes=%d\n",
		c.reads.Load(), c.readBytes.Load(), c.writes.Load(), c.writeBytes.Load())
	return nil
}

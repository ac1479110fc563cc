package integration_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/procfd"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
)

// Helpers of the stress tests (stress_exerciser_test.go,
// stress_concurrency_test.go): an in-process mount of a fresh volume over
// a real local key file and data-key Manager, the seed and op-count knobs,
// and self-describing block contents.
//
// Knobs (environment):
//
//	KMSFS_SEED=n       run with seed n (printed by every run) instead of a random one
//	KMSFS_SOAK_OPS=n   operations per exerciser run (make soak: 1000000)

// sxBlockSizes are the volume block sizes every stress test covers.
var sxBlockSizes = []int{4 << 10, 64 << 10}

// sxMountTimeout bounds one unmount or mount of sxVolume.
const sxMountTimeout = 30 * time.Second

// sxVolume is a fresh kmsfs volume mounted in this process: a cipher dir,
// a local key file, and a Manager over it. Remount gives it a new Manager
// and mount over the same cipher dir. Cleanup unmounts it and, when the
// test failed, prints the end of the mount's log.
type sxVolume struct {
	t      testing.TB
	bs     int
	Cipher string
	Mnt    string
	key    string
	vid    envelope.VolumeID
	log    *sxLogBuffer

	srv     *kfs.Server        // nil while unmounted
	mgr     *keysource.Manager // nil while unmounted
	journal *journal.Journal   // nil while unmounted
}

// sxNeedFUSE skips the test without /dev/fuse, or fails it under CI=true.
func sxNeedFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no /dev/fuse under CI=true: %v", err)
		}
		t.Skipf("no /dev/fuse: %v", err)
	}
}

// sxNewVolume makes and mounts a volume of block size bs.
func sxNewVolume(t testing.TB, bs int) *sxVolume {
	t.Helper()
	sxNeedFUSE(t)
	dir := t.TempDir()
	v := &sxVolume{t: t, bs: bs, Cipher: filepath.Join(dir, "cipher"), Mnt: filepath.Join(dir, "plain"),
		key: filepath.Join(dir, "key"), log: &sxLogBuffer{}}
	if _, err := rand.Read(v.vid[:]); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{v.Cipher, v.Mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(v.key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if v.srv != nil {
			if err := v.unmount(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("kmsfs log (last 4 KiB):\n%s", v.log.tail(4<<10))
		}
	})
	v.mount()
	return v
}

// mount mounts the volume with a new Manager over the key file.
func (v *sxVolume) mount() {
	v.t.Helper()
	layout, err := envelope.NewLayout(v.bs, envelope.DefaultSlotSize)
	if err != nil {
		v.t.Fatal(err)
	}
	// With a write journal, as kmsfs mount has.
	root, err := os.OpenRoot(v.Cipher)
	if err != nil {
		v.t.Fatal(err)
	}
	j, err := journal.Open(root, volconf.JournalName, 0)
	root.Close()
	if err != nil {
		v.t.Fatal(err)
	}
	vol, err := envelope.NewVolume(envelope.Options{Layout: layout, Volume: v.vid, Journal: j})
	if err != nil {
		v.t.Fatal(err)
	}
	src, err := local.Open(v.t.Context(), keysource.Spec{Type: local.Type, Value: v.key}, local.Options{VolumeID: v.vid})
	if err != nil {
		v.t.Fatal(err)
	}
	mgr, err := keysource.NewManager(keysource.Options{Primary: src})
	if err != nil {
		v.t.Fatal(err)
	}
	logger := logrus.New()
	logger.Out = v.log
	o := kfs.Options{CipherDir: v.Cipher, Volume: vol, Keys: mgr, Log: logrus.NewEntry(logger)}
	srv, err := kfs.Mount(v.Mnt, o, kfs.MountOptions("kmsfs-test", []string{"default_permissions"}, true))
	if err != nil {
		mgr.Close()
		j.Close()
		v.t.Fatalf("mount %s: %v", v.Mnt, err)
	}
	v.srv, v.mgr, v.journal = srv, mgr, j
}

// unmount unmounts the volume, bounded by sxMountTimeout, and closes its
// Manager. Every descriptor into the mount must be closed.
func (v *sxVolume) unmount() error {
	srv, mgr, j := v.srv, v.mgr, v.journal
	v.srv, v.mgr, v.journal = nil, nil, nil
	done := make(chan error, 1)
	go func() {
		err := srv.Unmount()
		if err == nil {
			srv.Wait()
		}
		done <- err
	}()
	defer mgr.Close()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("unmount %s: %w", v.Mnt, err)
		}
		return j.Close()
	case <-time.After(sxMountTimeout):
		return fmt.Errorf("unmount %s: not done after %v", v.Mnt, sxMountTimeout)
	}
}

// remount unmounts the volume and mounts it again with a new Manager.
func (v *sxVolume) remount() {
	v.t.Helper()
	if err := v.unmount(); err != nil {
		v.t.Fatal(err)
	}
	v.mount()
}

// path returns name under the mount point.
func (v *sxVolume) path(name string) string { return filepath.Join(v.Mnt, name) }

// sxLogBuffer is the mount's log sink, safe for concurrent use.
type sxLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *sxLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// tail returns the last n bytes logged.
func (l *sxLogBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b.Bytes()
	return string(b[max(0, len(b)-n):])
}

// envSeed returns the run's seed: KMSFS_SEED if set, else a random one. It
// logs the seed, so every failure shows it. The fault and stress tests
// share it.
func envSeed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv("KMSFS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("KMSFS_SEED=%q: %v", s, err)
		}
		t.Logf("seed %d (from KMSFS_SEED)", seed)
		return seed
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	seed := binary.LittleEndian.Uint64(b[:]) >> 1 // positive as int64, for readability
	t.Logf("seed %d (set KMSFS_SEED=%d to repeat)", seed, seed)
	return seed
}

// sxOps returns the exerciser's operation count: KMSFS_SOAK_OPS if set,
// else def.
func sxOps(t testing.TB, def int) int {
	t.Helper()
	s := os.Getenv("KMSFS_SOAK_OPS")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("KMSFS_SOAK_OPS=%q: want a positive count", s)
	}
	return n
}

// sxRepro returns the command that repeats test t with seed (and ops, if
// not 0).
func sxRepro(t testing.TB, seed uint64, ops int) string {
	env := fmt.Sprintf("KMSFS_SEED=%d ", seed)
	if ops > 0 {
		env += fmt.Sprintf("KMSFS_SOAK_OPS=%d ", ops)
	}
	return fmt.Sprintf("%sCI=true go test -count=1 -run '^%s$' ./integration/", env, sxRunPattern(t.Name()))
}

// sxRunPattern turns a test name into a -run pattern matching only it.
func sxRunPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = strings.NewReplacer("(", `\(`, ")", `\)`, ".", `\.`, "+", `\+`).Replace(p)
	}
	return strings.Join(parts, "$/^")
}

// sxStop returns when a test loop must give up: after budget, and in any
// case a minute before the go test deadline.
func sxStop(t testing.TB, budget time.Duration) time.Time {
	stop := time.Now().Add(budget)
	if tt, ok := t.(*testing.T); ok {
		if d, ok := tt.Deadline(); ok && d.Add(-time.Minute).Before(stop) {
			stop = d.Add(-time.Minute)
		}
	}
	return stop
}

// sxPread reads len(p) bytes at off, or up to the end of the file.
func sxPread(fd int, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(fd, p[n:], off+int64(n))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// sxPwrite writes all of p at off.
func sxPwrite(fd int, p []byte, off int64) error {
	for n := 0; n < len(p); {
		m, err := unix.Pwrite(fd, p[n:], off+int64(n))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

// sxDiff describes the first difference of got from want, which start at
// file offset base; "" if they are equal.
func sxDiff(got, want []byte, base int64, bs int) string {
	if bytes.Equal(got, want) {
		return ""
	}
	if len(got) != len(want) {
		return fmt.Sprintf("got %d bytes, want %d", len(got), len(want))
	}
	i := 0
	for got[i] == want[i] {
		i++
	}
	j := len(got)
	for got[j-1] == want[j-1] {
		j--
	}
	off := base + int64(i)
	e := min(i+16, len(got))
	return fmt.Sprintf("first difference at offset %d (block %d, +%d), last at %d: got %x, want %x",
		off, off/int64(bs), off%int64(bs), base+int64(j-1), got[i:e], want[i:e])
}

// sxRandFill fills p with bytes from rng.
func sxRandFill(rng *mrand.Rand, p []byte) {
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, rng.Uint64())
		p = p[8:]
	}
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

// Self-describing blocks: the concurrency tests write whole blocks whose
// content names the block, the writer and the writer's sequence number, so
// any read can tell which write it sees and whether the block is intact.
//
//	+---------------+-----------+------------+----------+-----------------------------+
//	| "sxblock" \0  | block (8) | writer (8) | seq (8)  | PCG(seed, block, writer, seq)|
//	+---------------+-----------+------------+----------+-----------------------------+
const (
	sxMagic     = "sxblock\x00"
	sxHeaderLen = 32
)

// sxFillBlock fills dst (one block) with the content writer's write seq
// puts in block.
func sxFillBlock(dst []byte, seed uint64, block int64, writer int, seq uint64) {
	copy(dst, sxMagic)
	binary.BigEndian.PutUint64(dst[8:], uint64(block))
	binary.BigEndian.PutUint64(dst[16:], uint64(writer))
	binary.BigEndian.PutUint64(dst[24:], seq)
	pcg := mrand.NewPCG(seed^uint64(block)*0x9e3779b97f4a7c15, uint64(writer)<<48^seq)
	body := dst[sxHeaderLen:]
	for len(body) >= 8 {
		binary.LittleEndian.PutUint64(body, pcg.Uint64())
		body = body[8:]
	}
}

// sxBlockVersion is the write a block's content comes from; writer -1 is
// a block never written (zeros).
type sxBlockVersion struct {
	writer int
	seq    uint64
}

// sxParseBlock says which write b, read from block, comes from; it fails
// if b is neither zeros nor exactly the content of one write to block.
// scratch is a block-sized buffer.
func sxParseBlock(b, scratch []byte, seed uint64, block int64) (sxBlockVersion, error) {
	if string(b[:8]) != sxMagic {
		if len(bytes.TrimLeft(b, "\x00")) == 0 {
			return sxBlockVersion{writer: -1}, nil
		}
		return sxBlockVersion{}, fmt.Errorf("block %d is neither zeros nor a written block: starts %x", block, b[:32])
	}
	v := sxBlockVersion{writer: int(binary.BigEndian.Uint64(b[16:])), seq: binary.BigEndian.Uint64(b[24:])}
	if got := int64(binary.BigEndian.Uint64(b[8:])); got != block {
		return v, fmt.Errorf("block %d holds the content of block %d (writer %d, seq %d)", block, got, v.writer, v.seq)
	}
	sxFillBlock(scratch, seed, block, v.writer, v.seq)
	if d := sxDiff(b, scratch, block*int64(len(b)), len(b)); d != "" {
		return v, fmt.Errorf("block %d is torn: header says writer %d seq %d, but %s", block, v.writer, v.seq, d)
	}
	return v, nil
}

// sxErrs collects the errors of concurrent workers; the first one tells
// every worker to stop.
type sxErrs struct {
	failed atomic.Bool
	mu     sync.Mutex
	list   []string
	more   int
}

func (e *sxErrs) add(format string, args ...any) {
	e.failed.Store(true)
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.list) == 10 {
		e.more++
		return
	}
	e.list = append(e.list, fmt.Sprintf(format, args...))
}

// check fails t with the errors collected, if any.
func (e *sxErrs) check(t *testing.T, seed uint64) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.list) > 0 {
		t.Fatalf("%d errors (%d more not shown):\n  %s\nseed %d; rerun with:\n  %s",
			len(e.list)+e.more, e.more, strings.Join(e.list, "\n  "), seed, sxRepro(t, seed, 0))
	}
}

// sxOpen opens path with flags, and O_DIRECT if direct.
func sxOpen(path string, flags int, direct bool) (int, error) {
	flags |= unix.O_CLOEXEC
	if direct {
		flags |= unix.O_DIRECT
	}
	return unix.Open(path, flags, 0)
}

// sxAligned returns a page-aligned buffer of n bytes for O_DIRECT,
// unmapped when the test ends. Call it on the test's goroutine.
func sxAligned(t testing.TB, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", n, err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// TestExerciserUnmountReleasesFDs checks what the exerciser's remount
// cycles rely on: an unmount of an in-process mount (fs.Mount, then
// Server.Unmount) leaves no descriptor of the cipher dir, or of anything
// in it, open in the process. NewRoot documents that the root's
// descriptor is closed when the filesystem is unmounted.
func TestExerciserUnmountReleasesFDs(t *testing.T) {
	v := sxNewVolume(t, sxBlockSizes[0])
	if err := os.Mkdir(v.path("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"f", "sub/g"} {
		if err := os.WriteFile(v.path(name), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for cycle := range 3 {
		for _, name := range []string{"f", "sub/g"} {
			if b, err := os.ReadFile(v.path(name)); err != nil || string(b) != "data" {
				t.Fatalf("cycle %d: read %s: %q, %v", cycle, name, b, err)
			}
		}
		if err := v.unmount(); err != nil {
			t.Fatal(err)
		}
		if open := procfd.Under(t, v.Cipher); len(open) > 0 {
			t.Errorf("cycle %d: after unmount the process still has %d descriptors into the cipher dir: %v",
				cycle, len(open), open)
		}
		v.mount()
	}
}

package integration_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/procfd"
)

// Helpers of the stress tests (stress_exerciser_test.go,
// stress_concurrency_test.go), which mount a fresh volume in process with
// fusetest.MountVolume (a real local key file and data-key Manager, a new
// Manager at every remount): the seed and op-count knobs, and
// self-describing block contents.
//
// Knobs (environment):
//
//	KMSFS_SEED=n       run with seed n (printed by every run) instead of a random one
//	KMSFS_SOAK_OPS=n   operations per exerciser run (make soak: 1000000)

// sxBlockSizes are the volume block sizes every stress test covers.
var sxBlockSizes = []int{4 << 10, 64 << 10}

// sxNameModes are the two ways a volume stores names, which the stress,
// crash and conformance suites all run with (subtests names=plain and
// names=encrypted).
var sxNameModes = []struct {
	name      string
	encrypted bool
}{{"plain", false}, {"encrypted", true}}

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
	v := fusetest.MountVolume(t, sxBlockSizes[0], kfs.Options{})
	if err := os.Mkdir(v.Path("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"f", "sub/g"} {
		if err := os.WriteFile(v.Path(name), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for cycle := range 3 {
		for _, name := range []string{"f", "sub/g"} {
			if b, err := os.ReadFile(v.Path(name)); err != nil || string(b) != "data" {
				t.Fatalf("cycle %d: read %s: %q, %v", cycle, name, b, err)
			}
		}
		v.Unmount()
		if open := procfd.Under(t, v.Cipher); len(open) > 0 {
			t.Errorf("cycle %d: after unmount the process still has %d descriptors into the cipher dir: %v",
				cycle, len(open), open)
		}
		v.Mount()
	}
}

package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// TestParallelMatchesSerial: with the same random source, the parallel and
// the serial path write byte-identical cipher files.
func TestParallelMatchesSerial(t *testing.T) {
	const bs = 4096
	for _, size := range []int{1, bs - 1, bs, bs + 1, 2*bs + 7, 32 * bs, 256*bs + 5} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			var outs [2][]byte
			for i, workers := range []int{1, 4} {
				v := newVolume(t, bs, func(o *envelope.Options) {
					o.Rand = seeded(42)
					o.Workers = workers
					o.ParallelMin = 1
				})
				f, b := newFile(t, v, dataKey(3))
				if _, err := f.WriteAt(fill(size, 5), 3); err != nil {
					t.Fatal(err)
				}
				outs[i] = b.Bytes()
			}
			if !bytes.Equal(outs[0], outs[1]) {
				t.Fatal("parallel and serial cipher files differ")
			}
		})
	}
}

// TestCodecParallelOpenReportsFirstBadBlock: a damaged block in the second
// half of a parallel request is reported with the bytes before it.
func TestCodecParallelOpenReportsFirstBadBlock(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs, func(o *envelope.Options) { o.Workers = 2; o.ParallelMin = 1 })
	var id envelope.FileID
	c, err := v.NewCodec(dataKey(1), id)
	if err != nil {
		t.Fatal(err)
	}
	plain := fill(64*bs, 8)
	sealed := make([]byte, v.Layout().SealedLen(len(plain)))
	if err := c.Seal(sealed, plain, 0, 63); err != nil {
		t.Fatal(err)
	}
	// The participants take chunks concurrently, so with two bad blocks
	// the higher one may well fail first.
	for _, damaged := range [][]int{{0}, {31}, {32}, {50}, {63}, {5, 60}, {40, 63}} {
		bad := damaged[0]
		t.Run(fmt.Sprintf("bad=%v", damaged), func(t *testing.T) {
			s := bytes.Clone(sealed)
			for _, i := range damaged {
				s[i*(bs+envelope.BlockOverhead)+20] ^= 1
			}
			got := make([]byte, len(plain))
			n, err := c.Open(got, s, 0, 63)
			if !errors.Is(err, envelope.ErrAuth) || n != bad*bs || !bytes.Equal(got[:n], plain[:n]) {
				t.Fatalf("Open = %d, %v; want %d bytes and ErrAuth", n, err, bad*bs)
			}
		})
	}
}

// TestLargeReads: large reads, opened in parallel, return what a serial
// volume returns at any offset; a damaged block in the middle stops the
// read at that block with ErrAuth and the bytes before it; a damaged head
// block, a failing backing and a file cut short fail the read too.
func TestLargeReads(t *testing.T) {
	const bs = 4096
	const size = 300*bs + 123
	want := fill(size, 11)
	par := newVolume(t, bs, func(o *envelope.Options) { o.Workers = 2; o.ParallelMin = 1 })
	f, mem := newFile(t, par, dataKey(4))
	if _, err := f.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	ser := newVolume(t, bs, func(o *envelope.Options) { o.ParallelMin = -1 })
	for _, r := range []struct{ off, n int }{{0, size}, {1, size - 1}, {bs, 200 * bs}, {bs + 7, 150*bs + 9}, {5, 64*bs - 10}, {size - 70*bs, 70 * bs}} {
		for name, v := range map[string]*envelope.Volume{"parallel": par, "serial": ser} {
			g := reopen(t, v, mem)
			got := make([]byte, r.n)
			if n, err := g.ReadAt(got, int64(r.off)); n != r.n || (err != nil && err != io.EOF) || !bytes.Equal(got, want[r.off:r.off+r.n]) {
				t.Fatalf("%s: read %d at %d: %d, %v", name, r.n, r.off, n, err)
			}
		}
	}
	l := par.Layout()
	for _, bad := range []int{0, 31, 32, 33, 100, 250} {
		raw := mem.Bytes()
		raw[l.BlockOffset(int64(bad))+30] ^= 1
		g := reopen(t, par, memfile.New(raw))
		got := make([]byte, size)
		n, err := g.ReadAt(got, 0)
		if !errors.Is(err, envelope.ErrAuth) || n != bad*bs || !bytes.Equal(got[:n], want[:n]) {
			t.Fatalf("block %d damaged: %d, %v; want %d bytes and ErrAuth", bad, n, err, bad*bs)
		}
	}
	// A damaged head block of a read that starts inside it, and a read
	// that fails.
	raw := mem.Bytes()
	raw[l.BlockOffset(0)+30] ^= 1
	if n, err := reopen(t, par, memfile.New(raw)).ReadAt(make([]byte, size-1), 1); n != 0 || !errors.Is(err, envelope.ErrAuth) {
		t.Fatalf("damaged head block: %d, %v", n, err)
	}
	fb := &failingReads{File: memfile.New(mem.Bytes())}
	g0 := reopen(t, par, fb)
	fb.after = 1
	if n, err := g0.ReadAt(make([]byte, size), 0); n != 0 || !errors.Is(err, syscall.EIO) {
		t.Fatalf("failing backing: %d, %v", n, err)
	}
	cut := memfile.New(mem.Bytes()[:l.BlockOffset(200)+100])
	g := reopen(t, par, cut)
	got := make([]byte, 250*bs)
	if n, err := g.ReadAt(got, 0); err == nil || n > 200*bs || !bytes.Equal(got[:n], want[:n]) {
		t.Fatalf("cut short: %d, %v", n, err)
	}
}

func TestHoles(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	f, b := newFile(t, v, dataKey(4))
	if _, err := f.WriteAt([]byte("end"), 5*bs+1); err != nil {
		t.Fatal(err)
	}
	l := v.Layout()
	stored := b.Bytes()
	if !bytes.Equal(stored[l.HeaderSize():l.BlockOffset(5)], make([]byte, l.BlockOffset(5)-l.HeaderSize())) {
		t.Fatal("blocks before the write are not stored as zeros")
	}
	got := make([]byte, 5*bs+4)
	if n, err := f.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	want := append(make([]byte, 5*bs+1), "end"...)
	if !bytes.Equal(got, want) {
		t.Fatal("hole does not read as zeros")
	}
	// Truncating up also leaves a hole and seals a last block of zeros.
	if err := f.Truncate(9 * bs); err != nil {
		t.Fatal(err)
	}
	stored = b.Bytes()
	if !bytes.Equal(stored[l.BlockOffset(6):l.BlockOffset(8)], make([]byte, 2*l.SealedBlockSize())) {
		t.Fatal("blocks 6 and 7 are not holes")
	}
	if bytes.Equal(stored[l.BlockOffset(8):], make([]byte, l.SealedBlockSize())) {
		t.Fatal("the last block is a hole; it must be sealed")
	}
}

// TestRewrap rotates a file to a new stanza and checks that a crash after
// any number of written header bytes leaves the file readable under the
// old or the new stanza.
func TestRewrap(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	dk := dataKey(11)
	plain := fill(3*bs+5, 12)
	f, b := newFile(t, v, dk)
	if _, err := f.WriteAt(plain, 0); err != nil {
		t.Fatal(err)
	}
	before := b.Bytes()
	newStanza := stanza.Stanza{Type: "test", KeyID: "rotated", Body: dk}

	t.Run("wrong-data-key", func(t *testing.T) {
		f := reopen(t, v, memfile.New(before))
		if err := f.Rewrap(dataKey(12), []stanza.Stanza{newStanza}); !errors.Is(err, stanza.ErrInvalid) {
			t.Fatalf("Rewrap with another key = %v, want ErrInvalid", err)
		}
	})
	t.Run("complete", func(t *testing.T) {
		m := memfile.New(before)
		f := reopen(t, v, m)
		if err := f.Rewrap(dk, []stanza.Stanza{newStanza}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.Bytes()[v.Layout().HeaderSize():], before[v.Layout().HeaderSize():]) {
			t.Fatal("rewrap changed the content")
		}
		g, err := v.Open(context.Background(), m, onlyKeyID("rotated"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, g, plain)
		if _, err := v.Open(context.Background(), m, onlyKeyID("test-key")); err == nil {
			t.Fatal("old stanza still opens the file after a complete rewrap")
		}
		// Rewrap again: the sequence numbers keep growing.
		if err := g.Rewrap(dk, []stanza.Stanza{clearStanza(dk)}); err != nil {
			t.Fatal(err)
		}
		if h := reopen(t, v, m).Header(); h.Seq != 5 || h.Stanzas[0].KeyID != "test-key" {
			t.Fatalf("after two rewraps: seq %d, key %q", h.Seq, h.Stanzas[0].KeyID)
		}
	})
	t.Run("crash", func(t *testing.T) {
		ss := v.Layout().SlotSize()
		for limit := 0; limit <= 2*ss; limit += 7 {
			m := &crashAfter{File: memfile.New(before), limit: limit}
			f := reopen(t, v, m)
			err := f.Rewrap(dk, []stanza.Stanza{newStanza})
			if limit < 2*ss && err == nil {
				t.Fatalf("limit=%d: rewrap did not notice the crash", limit)
			}
			g, err := v.Open(context.Background(), m.File, either{})
			if err != nil {
				t.Fatalf("limit=%d: file unreadable after crash: %v", limit, err)
			}
			readAll(t, g, plain)
		}
	})
}

// crashAfter lets limit bytes be written, then fails every write, as if
// the process had died mid-write.
type crashAfter struct {
	*memfile.File
	limit, written int
}

func (c *crashAfter) WriteAt(p []byte, off int64) (int, error) {
	n := min(len(p), max(0, c.limit-c.written))
	c.written += n
	if _, err := c.File.WriteAt(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, errors.New("crashed")
	}
	return n, nil
}

type onlyKeyID string

func (k onlyKeyID) UnwrapKey(_ context.Context, ss []stanza.Stanza) ([]byte, error) {
	for _, s := range ss {
		if s.KeyID == string(k) {
			return bytes.Clone(s.Body), nil
		}
	}
	return nil, stanza.ErrNotMine
}

type either struct{}

func (either) UnwrapKey(_ context.Context, ss []stanza.Stanza) ([]byte, error) {
	return bytes.Clone(ss[0].Body), nil
}

// TestConcurrentAccess: readers run alongside a writer of disjoint
// blocks; every read returns either old or new content of each block, and
// the final content is the model's. Run with -race.
func TestConcurrentAccess(t *testing.T) {
	const bs, blocks, writers = 4096, 64, 4
	v := newVolume(t, bs)
	f, _ := newFile(t, v, dataKey(20))
	old := fill(blocks*bs, 1)
	if _, err := f.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	next := fill(blocks*bs, 2)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range writers {
		wg.Go(func() {
			for i := w; i < blocks; i += writers {
				if _, err := f.WriteAt(next[i*bs:(i+1)*bs], int64(i*bs)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for r := range 4 {
		wg.Go(func() {
			p := make([]byte, 8*bs)
			for k := range 50 {
				off := ((r*13 + k*7) % (blocks - 8)) * bs
				if _, err := f.ReadAt(p, int64(off)); err != nil {
					errs <- err
					return
				}
				for i := 0; i < 8; i++ {
					blk := p[i*bs : (i+1)*bs]
					o := off + i*bs
					if !bytes.Equal(blk, old[o:o+bs]) && !bytes.Equal(blk, next[o:o+bs]) {
						errs <- fmt.Errorf("block %d is neither old nor new", o/bs)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	readAll(t, f, next)
}

// noSpace is a backing file on a full disk: reservations fail.
type noSpace struct{ *memfile.File }

func (noSpace) Reserve(off, n int64) error { return syscall.ENOSPC }

// TestFullDiskLeavesFileUnchanged: a write past a partial last block that
// leaves a hole is refused before the file changes when space cannot be
// reserved.
func TestFullDiskLeavesFileUnchanged(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	f, m := newFile(t, v, dataKey(30))
	if _, err := f.WriteAt(fill(bs+10, 1), 0); err != nil {
		t.Fatal(err)
	}
	before := m.Bytes()
	g := reopen(t, v, noSpace{m})
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"write-past-hole", func() error { _, err := g.WriteAt([]byte("x"), 5*bs); return err }},
		{"truncate-up", func() error { return g.Truncate(9 * bs) }},
	} {
		t.Run(op.name, func(t *testing.T) {
			if err := op.do(); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("got %v, want ENOSPC", err)
			}
			if !bytes.Equal(m.Bytes(), before) || g.Size() != bs+10 {
				t.Fatalf("the file changed: size %d", g.Size())
			}
		})
	}
}

// failingReads fails the after-th read from when after is set with EIO.
type failingReads struct {
	*memfile.File
	after int
}

func (f *failingReads) ReadAt(p []byte, off int64) (int, error) {
	if f.after > 0 {
		f.after--
		if f.after == 0 {
			return 0, syscall.EIO
		}
	}
	return f.File.ReadAt(p, off)
}

// budgetRand is a random source that fails once it has given left bytes.
type budgetRand struct {
	mu   sync.Mutex
	r    io.Reader
	left int
}

var errNoEntropy = errors.New("random source exhausted")

func (b *budgetRand) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(p) > b.left {
		return 0, errNoEntropy
	}
	b.left -= len(p)
	return b.r.Read(p)
}

func (b *budgetRand) set(left int) {
	b.mu.Lock()
	b.left = left
	b.mu.Unlock()
}

// TestNonceSourceFails: a random source failing partway through a write's
// nonces fails the write with its error on the serial, parallel and
// pipelined paths, before any block is sealed or written, and the file
// keeps its contents.
func TestNonceSourceFails(t *testing.T) {
	const bs = 4096
	for _, tc := range []struct {
		name          string
		workers, size int
	}{
		{"serial", 1, 64 * bs},
		{"parallel", 2, 32 * bs},   // fewer blocks than a pipeline takes
		{"pipelined", 2, 256 * bs}, // sealed while it is written
	} {
		nonces := tc.size / bs * 16 // bytes of nonces the write reads (16 per block)
		for _, budget := range []int{0, nonces / 4, nonces * 3 / 4} {
			t.Run(fmt.Sprintf("%s/budget=%d", tc.name, budget), func(t *testing.T) {
				src := &budgetRand{r: seeded(7), left: 1 << 30}
				v := newVolume(t, bs, func(o *envelope.Options) {
					o.Rand = src
					o.Workers = tc.workers
					o.ParallelMin = 1
				})
				f, _ := newFile(t, v, dataKey(3))
				old := fill(tc.size, 1)
				if _, err := f.WriteAt(old, 0); err != nil {
					t.Fatal(err)
				}
				src.set(budget)
				if _, err := f.WriteAt(fill(tc.size, 2), 0); !errors.Is(err, errNoEntropy) {
					t.Fatalf("write with a failing random source: %v, want %v", err, errNoEntropy)
				}
				got := make([]byte, tc.size)
				if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, old) {
					t.Fatalf("after the failed write: %v, contents changed: %t", err, !bytes.Equal(got, old))
				}
			})
		}
	}
}

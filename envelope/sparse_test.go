package envelope_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// zeroBlock overwrites stored block i of cipher with zeros, as an attacker
// on the storage would to pass data off as a hole.
func zeroBlock(l envelope.Layout, cipher []byte, i int64) []byte {
	c := bytes.Clone(cipher)
	lo := l.BlockOffset(i)
	clear(c[lo:min(lo+l.SealedBlockSize(), int64(len(c)))])
	return c
}

// readBlocks reads every block of f and returns the indices that failed
// with ErrAuth, checking every byte returned against want.
func readBlocks(t *testing.T, f *envelope.File, want []byte) []int64 {
	t.Helper()
	bs := int64(4096)
	var bad []int64
	for i := int64(0); i*bs < int64(len(want)); i++ {
		p := make([]byte, bs)
		n, err := f.ReadAt(p, i*bs)
		if !bytes.Equal(p[:n], want[i*bs:i*bs+int64(n)]) {
			t.Fatalf("block %d: returned bytes differ from what was written", i)
		}
		var be *envelope.BlockError
		switch {
		case err == nil || err == io.EOF:
		case errors.Is(err, envelope.ErrAuth) && errors.As(err, &be) && be.Block == i:
			bad = append(bad, i)
		default:
			t.Fatalf("block %d: %v, want ErrAuth naming the block", i, err)
		}
	}
	return bad
}

// TestZeroedBlockDetected is the attack of zeroing stored blocks of a
// version 2 file: a data block replaced by zeros fails to read, naming the
// block, while the file's own holes still read as zeros. A version 1 file
// reads the zeroed block as a hole (the weakness version 2 removes).
func TestZeroedBlockDetected(t *testing.T) {
	const bs = 4096
	// Blocks 0-1 data, 2-4 holes (a write past the end), 5-7 data.
	want := append(fill(2*bs, 1), make([]byte, 3*bs)...)
	want = append(want, fill(3*bs-100, 2)...)
	for _, version := range []int{1, 2} {
		v := newVolume(t, bs, func(o *envelope.Options) { o.FormatVersion = version })
		f, mem := newFile(t, v, dataKey(7))
		if _, err := f.WriteAt(want[:2*bs], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(want[5*bs:], 5*bs); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		for _, zeroed := range []int64{0, 1, 5, 6} {
			t.Run(fmt.Sprintf("version=%d,block=%d", version, zeroed), func(t *testing.T) {
				g := reopen(t, v, memfile.New(zeroBlock(v.Layout(), mem.Bytes(), zeroed)))
				if version == 1 {
					// What version 2 fixes: the zeroed block reads as a hole.
					p := make([]byte, bs)
					if n, err := g.ReadAt(p, zeroed*bs); n != bs || err != nil || !bytes.Equal(p, make([]byte, bs)) {
						t.Fatalf("version 1 zeroed block: %d, %v", n, err)
					}
					return
				}
				if bad := readBlocks(t, g, want); !slices.Equal(bad, []int64{zeroed}) {
					t.Fatalf("failed blocks %v, want exactly [%d]", bad, zeroed)
				}
			})
		}
		t.Run(fmt.Sprintf("version=%d,holes", version), func(t *testing.T) {
			if bad := readBlocks(t, reopen(t, v, memfile.New(mem.Bytes())), want); len(bad) != 0 {
				t.Fatalf("failed blocks %v in an intact file", bad)
			}
		})
	}
}

// TestFilledHoleZeroedDetected: a hole that was written since is data; the
// attacker zeroing it back is detected while the file is open, after it
// is closed and reopened, and after a sync.
func TestFilledHoleZeroedDetected(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	f, mem := newFile(t, v, dataKey(8))
	if _, err := f.WriteAt(fill(100, 3), 9*bs); err != nil {
		t.Fatal(err)
	}
	if got := f.Holes(); !slices.Equal(got, []envelope.BlockRange{{Lo: 0, Hi: 9}}) {
		t.Fatalf("holes %v, want [0,9)", got)
	}
	want := make([]byte, 9*bs+100)
	copy(want[9*bs:], fill(100, 3))
	copy(want[4*bs:], fill(bs, 4))
	if _, err := f.WriteAt(want[4*bs:5*bs], 4*bs); err != nil {
		t.Fatal(err)
	}
	if got := f.Holes(); !slices.Equal(got, []envelope.BlockRange{{Lo: 0, Hi: 4}, {Lo: 5, Hi: 9}}) {
		t.Fatalf("holes %v, want [0,4) [5,9)", got)
	}
	t.Run("open", func(t *testing.T) {
		// Zeroed under the open File: it knows block 4 holds data.
		raw := mem.Bytes()
		z := zeroBlock(v.Layout(), raw, 4)
		if _, err := mem.WriteAt(z[v.Layout().BlockOffset(4):v.Layout().BlockOffset(5)], v.Layout().BlockOffset(4)); err != nil {
			t.Fatal(err)
		}
		if bad := readBlocks(t, f, want); !slices.Equal(bad, []int64{4}) {
			t.Fatalf("failed blocks %v, want [4]", bad)
		}
		if _, err := mem.WriteAt(raw[v.Layout().BlockOffset(4):v.Layout().BlockOffset(5)], v.Layout().BlockOffset(4)); err != nil {
			t.Fatal(err)
		}
	})
	for _, step := range []string{"sync", "close"} {
		t.Run(step, func(t *testing.T) {
			var err error
			if step == "sync" {
				err = f.Sync()
			} else {
				err = f.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			g := reopen(t, v, memfile.New(zeroBlock(v.Layout(), mem.Bytes(), 4)))
			if got := g.Holes(); !slices.Equal(got, []envelope.BlockRange{{Lo: 0, Hi: 4}, {Lo: 5, Hi: 9}}) {
				t.Fatalf("holes after %s: %v, want [0,4) [5,9)", step, got)
			}
			if bad := readBlocks(t, g, want); !slices.Equal(bad, []int64{4}) {
				t.Fatalf("failed blocks %v, want [4]", bad)
			}
		})
	}
}

// TestHolesBeforeTheirHeader: a header that still lists a block as a hole
// after the block was written (a crash before the lazy header write) reads
// the block's data, not zeros.
func TestHolesBeforeTheirHeader(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	f, mem := newFile(t, v, dataKey(9))
	if _, err := f.WriteAt([]byte("end"), 6*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fill(bs, 5), 2*bs); err != nil {
		t.Fatal(err)
	}
	crashed := mem.Bytes() // no Sync or Close: the header still lists block 2
	g := reopen(t, v, memfile.New(crashed))
	if got := g.Holes(); !slices.Equal(got, []envelope.BlockRange{{Lo: 0, Hi: 6}}) {
		t.Fatalf("holes %v, want the header's [0,6)", got)
	}
	p := make([]byte, bs)
	if n, err := g.ReadAt(p, 2*bs); n != bs || err != nil || !bytes.Equal(p, fill(bs, 5)) {
		t.Fatalf("block 2: %d, %v; equal %v", n, err, bytes.Equal(p, fill(bs, 5)))
	}
}

// TestCutBehindHandle is the attack of cutting the cipher file under an
// open File: the missing blocks fail with ErrAuth naming the first one;
// they never read as zeros, and a partial write into one fails instead of
// sealing zeros as data.
func TestCutBehindHandle(t *testing.T) {
	const bs = 4096
	for _, version := range []int{1, 2} {
		for _, cut := range []int64{0, 1, 100, 4000} { // bytes into block 5 that remain
			t.Run(fmt.Sprintf("version=%d,cut=%d", version, cut), func(t *testing.T) {
				v := newVolume(t, bs, func(o *envelope.Options) { o.FormatVersion = version })
				want := fill(8*bs, 6)
				f, mem := newFile(t, v, dataKey(10))
				if _, err := f.WriteAt(want, 0); err != nil {
					t.Fatal(err)
				}
				if err := mem.Truncate(v.Layout().BlockOffset(5) + cut); err != nil {
					t.Fatal(err)
				}
				p := make([]byte, len(want))
				n, err := f.ReadAt(p, 0)
				var be *envelope.BlockError
				if !errors.Is(err, envelope.ErrAuth) || !errors.As(err, &be) || be.Block != 5 || n != 5*bs || !bytes.Equal(p[:n], want[:n]) {
					t.Fatalf("read = %d, %v; want %d bytes and ErrAuth at block 5", n, err, 5*bs)
				}
				for _, off := range []int64{5 * bs, 6*bs + 10, 7 * bs} {
					if n, err := f.ReadAt(p[:100], off); n != 0 || !errors.Is(err, envelope.ErrAuth) {
						t.Fatalf("read at %d = %d, %v; want ErrAuth", off, n, err)
					}
				}
				if _, err := f.WriteAt([]byte("x"), 6*bs+1); !errors.Is(err, envelope.ErrAuth) {
					t.Fatalf("partial write into a missing block: %v, want ErrAuth", err)
				}
			})
		}
	}
}

// TestSparseListBounded: a file with more separate holes than its header
// slot can list keeps the smallest ones as sealed zero blocks; the content
// is intact, the header fits, and every block that is not listed
// authenticates.
func TestSparseListBounded(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	// A stanza that leaves room for only a few ranges in a 1 KiB slot.
	dk := dataKey(11)
	big := stanza.Stanza{Type: "test", KeyID: "test-key", Body: dk}
	pad := stanza.Stanza{Type: "pad", KeyID: "pad", Body: make([]byte, 800)}
	mem := &memfile.File{}
	f, err := v.Create(mem, dk, []stanza.Stanza{big, pad})
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 40 {
		// Block 2i+1 of data after a one-block hole, every sixth hole
		// three blocks long.
		gap := 1
		if i%6 == 0 {
			gap = 3
		}
		off := len(want) + gap*bs
		want = append(want, make([]byte, gap*bs)...)
		data := fill(bs, uint64(i))
		want = append(want, data...)
		if _, err := f.WriteAt(data, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	holes := f.Holes()
	if len(holes) == 0 || len(holes) >= 40 {
		t.Fatalf("%d holes listed; want some, fewer than the 40 made", len(holes))
	}
	// The smallest holes go first: while any one-block hole is kept, all
	// seven three-block holes are.
	var ones, threes int
	for _, h := range holes {
		switch h.Hi - h.Lo {
		case 1:
			ones++
		case 3:
			threes++
		}
	}
	if ones > 0 && threes != 7 {
		t.Fatalf("holes %v: %d one-block holes kept but only %d of 7 three-block ones", holes, ones, threes)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g := reopen(t, v, memfile.New(mem.Bytes()))
	if got := g.Holes(); !slices.Equal(got, holes) {
		t.Fatalf("header holes %v, file had %v", got, holes)
	}
	if bad := readBlocks(t, g, want); len(bad) != 0 {
		t.Fatalf("failed blocks %v", bad)
	}
	// Every block not listed is data now: zeroing any is detected.
	for i := int64(0); i*bs < int64(len(want))-bs; i++ {
		listed := false
		for _, h := range holes {
			listed = listed || (h.Lo <= i && i < h.Hi)
		}
		if listed {
			continue
		}
		z := reopen(t, v, memfile.New(zeroBlock(v.Layout(), mem.Bytes(), i)))
		if _, err := z.ReadAt(make([]byte, bs), i*bs); !errors.Is(err, envelope.ErrAuth) {
			t.Fatalf("zeroed block %d: %v, want ErrAuth", i, err)
		}
	}
}

// syncLog is a backing that records its writes and syncs, to check the
// order of header slot writes.
type syncLog struct {
	*memfile.File
	ops []string
}

func (s *syncLog) WriteAt(p []byte, off int64) (int, error) {
	s.ops = append(s.ops, fmt.Sprintf("write@%d", off))
	return s.File.WriteAt(p, off)
}

func (s *syncLog) Sync() error {
	s.ops = append(s.ops, "sync")
	return nil
}

// TestHeaderSlotsNeverBothInFlight: two header writes in a row are
// separated by a sync, so a power loss can tear at most one slot.
func TestHeaderSlotsNeverBothInFlight(t *testing.T) {
	const bs = 4096
	v := newVolume(t, bs)
	_, mem := newFile(t, v, dataKey(12))
	b := &syncLog{File: mem}
	g := reopen(t, v, b)
	ss := int64(v.Layout().SlotSize())
	for _, off := range []int64{3 * bs, 8 * bs, 20 * bs} { // each leaves a new hole
		if _, err := g.WriteAt([]byte("x"), off); err != nil {
			t.Fatal(err)
		}
	}
	last := ""
	for _, op := range b.ops {
		if op == "write@0" || op == fmt.Sprintf("write@%d", ss) {
			if last != "" && last != "sync" {
				t.Fatalf("ops %v: header slot written while the other one is unsynced", b.ops)
			}
			last = op
		} else if op == "sync" {
			last = "sync"
		}
	}
	if n := slices.Index(b.ops, "write@0"); n < 0 || slices.Index(b.ops, fmt.Sprintf("write@%d", ss)) < 0 {
		t.Fatalf("ops %v: both slots should have been written", b.ops)
	}
}

// TestParseSparseHostile: sparse ranges in a header are bounded by the slot
// and accepted only in canonical form; a crafted list fails with
// ErrFormat (before any key is asked for) instead of being trusted.
func TestParseSparseHostile(t *testing.T) {
	var slot []byte
	var l envelope.Layout
	for _, v := range loadVectorDir(t, "testdata/vectors-v2") {
		if v.Name == "bs4096-size1" {
			l = v.vol.Layout()
			slot = bytes.Clone(v.cipher[:l.SlotSize()])
		}
	}
	if slot == nil {
		t.Fatal("vector bs4096-size1 missing")
	}
	h, err := envelope.ParseHeaderSlot(l, slot)
	if err != nil || len(h.Sparse) != 0 {
		t.Fatalf("the vector's slot: %v, %v", h, err)
	}
	end := 60
	for _, s := range h.Stanzas {
		end += 1 + len(s.Type) + 2 + len(s.KeyID) + 2 + len(s.Body)
	}
	for _, c := range []struct {
		name   string
		count  uint16
		ranges []byte
		ok     bool
	}{
		{"count=1,ok", 1, []byte{3, 2}, true},
		{"count=2,ok", 2, []byte{0, 1, 1, 5}, true},
		{"count=max", 0xffff, []byte{1, 1}, false},
		{"count=2,one-range", 2, []byte{3, 2}, false},
		{"length=0", 1, []byte{3, 0}, false},
		{"adjacent", 2, []byte{0, 1, 0, 1}, false},
		{"varint-cut", 1, []byte{0x80}, false},
		{"varint-overlong", 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1}, false},
		{"past-2^51", 1, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x04, 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := bytes.Clone(slot)
			s[58], s[59] = byte(c.count>>8), byte(c.count)
			copy(s[end:], c.ranges)
			_, err := envelope.ParseHeaderSlot(l, s)
			if c.ok != (err == nil) || (err != nil && !errors.Is(err, envelope.ErrFormat)) {
				t.Fatalf("parse: %v, want ok=%v or ErrFormat", err, c.ok)
			}
		})
	}
}

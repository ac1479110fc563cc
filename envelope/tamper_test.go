package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// tamperFixture is a multi-block file (last block partial) plus a second
// file under the same data key, for moving blocks and headers between them.
type tamperFixture struct {
	v          *envelope.Volume
	l          envelope.Layout
	plain      []byte
	a, b       []byte // cipher files
	plainB     []byte
	blocks     int
	headerSize int
}

func newTamperFixture(t *testing.T) *tamperFixture {
	const bs = 4096
	v := newVolume(t, bs)
	fx := &tamperFixture{v: v, l: v.Layout(), plain: fill(3*bs+100, 1), plainB: fill(3*bs+100, 2), blocks: 4}
	fx.headerSize = int(fx.l.HeaderSize())
	for _, x := range []struct {
		plain []byte
		out   *[]byte
	}{{fx.plain, &fx.a}, {fx.plainB, &fx.b}} {
		f, b := newFile(t, v, dataKey(9))
		if _, err := f.WriteAt(x.plain, 0); err != nil {
			t.Fatal(err)
		}
		*x.out = b.Bytes()
	}
	return fx
}

// region returns the byte range of sealed block i in a cipher file of n bytes.
func (fx *tamperFixture) region(i, n int) (int, int) {
	lo := int(fx.l.BlockOffset(int64(i)))
	return lo, min(lo+int(fx.l.SealedBlockSize()), n)
}

// check opens cipher and reads it block by block and whole. Every byte it
// returns must equal the original; each block in damaged must fail with a
// sentinel error, and with strict every other block must read.
// It returns whether any read failed.
func (fx *tamperFixture) check(t *testing.T, cipher []byte, damaged map[int]bool, strict bool) bool {
	t.Helper()
	f, err := fx.v.Open(context.Background(), memfile.New(cipher), &clearKeys{})
	if err != nil {
		if !isSentinel(err) {
			t.Fatalf("open: %v is not a sentinel error", err)
		}
		return true
	}
	bs := fx.l.BlockSize()
	failed := false
	size := int(f.Size())
	for i := 0; i*bs < size; i++ {
		p := make([]byte, bs)
		n, err := f.ReadAt(p, int64(i*bs))
		if err != nil && err != io.EOF {
			failed = true
			if !isSentinel(err) {
				t.Fatalf("block %d: %v is not a sentinel error", i, err)
			}
			if n != 0 {
				t.Fatalf("block %d: failed read returned %d bytes", i, n)
			}
			if strict && !damaged[i] {
				t.Fatalf("block %d is intact but failed: %v", i, err)
			}
			continue
		}
		if damaged[i] {
			t.Fatalf("damaged block %d read without error", i)
		}
		if !bytes.Equal(p[:n], fx.plain[i*bs:min(i*bs+n, len(fx.plain))]) || i*bs+n > len(fx.plain) {
			t.Fatalf("block %d: returned bytes differ from what was written", i)
		}
	}
	all := make([]byte, size+1)
	n, err := f.ReadAt(all, 0)
	if !bytes.Equal(all[:n], fx.plain[:min(n, len(fx.plain))]) || n > len(fx.plain) {
		t.Fatalf("whole read: returned bytes differ from what was written")
	}
	if err == io.EOF {
		err = nil
	}
	if err != nil && !isSentinel(err) {
		t.Fatalf("whole read: %v is not a sentinel error", err)
	}
	return failed || err != nil
}

func TestTamperFlipEveryByte(t *testing.T) {
	fx := newTamperFixture(t)
	for pos := range fx.a {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(fx.a)
			c[pos] ^= bit
			damaged := map[int]bool{}
			if pos >= fx.headerSize {
				damaged[(pos-fx.headerSize)/int(fx.l.SealedBlockSize())] = true
			}
			failed := fx.check(t, c, damaged, true)
			// A flip in one header slot is repaired by the other slot;
			// a flip in a block must be caught.
			if pos >= fx.headerSize && !failed {
				t.Fatalf("pos=%d,bit=%#x: flip not detected", pos, bit)
			}
		}
	}
}

func TestTamperTruncateEveryLength(t *testing.T) {
	fx := newTamperFixture(t)
	for n := 0; n < len(fx.a); n++ {
		failed := fx.check(t, fx.a[:n], nil, false)
		// Cutting the file to nothing or to its bare header leaves an empty
		// file (documented in FORMAT.md); every other cut is detected.
		if n != 0 && n != fx.headerSize && !failed {
			t.Fatalf("len=%d: truncation not detected", n)
		}
	}
}

func TestTamperBlocks(t *testing.T) {
	fx := newTamperFixture(t)
	cut := func(c []byte, i int) []byte { lo, hi := fx.region(i, len(c)); return c[lo:hi] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	hdr := fx.a[:fx.headerSize]
	blk := func(c []byte, i int) []byte { return bytes.Clone(cut(c, i)) }
	cases := []struct {
		name    string
		cipher  []byte
		damaged map[int]bool
	}{
		{"delete=1", join(hdr, blk(fx.a, 0), blk(fx.a, 2), blk(fx.a, 3)), map[int]bool{1: true, 2: true}},
		{"delete=0", join(hdr, blk(fx.a, 1), blk(fx.a, 2), blk(fx.a, 3)), map[int]bool{0: true, 1: true, 2: true}},
		{"duplicate=1", join(hdr, blk(fx.a, 0), blk(fx.a, 1), blk(fx.a, 1), blk(fx.a, 2), blk(fx.a, 3)), map[int]bool{2: true, 3: true, 4: true}},
		{"swap=0,1", join(hdr, blk(fx.a, 1), blk(fx.a, 0), blk(fx.a, 2), blk(fx.a, 3)), map[int]bool{0: true, 1: true}},
		{"swap=1,2", join(hdr, blk(fx.a, 0), blk(fx.a, 2), blk(fx.a, 1), blk(fx.a, 3)), map[int]bool{1: true, 2: true}},
		{"from-other-file=2", join(hdr, blk(fx.a, 0), blk(fx.a, 1), blk(fx.b, 2), blk(fx.a, 3)), map[int]bool{2: true}},
		{"from-other-file=3", join(hdr, blk(fx.a, 0), blk(fx.a, 1), blk(fx.a, 2), blk(fx.b, 3)), map[int]bool{3: true}},
		{"header-of-other-file", join(fx.b[:fx.headerSize], fx.a[fx.headerSize:]), map[int]bool{0: true, 1: true, 2: true, 3: true}},
		{"drop-last", fx.a[:fx.l.BlockOffset(3)], map[int]bool{2: true}},
		{"last-as-middle", join(hdr, blk(fx.a, 0), blk(fx.a, 1), blk(fx.a, 2), blk(fx.a, 3), blk(fx.a, 3)), nil},
		{"zero-last", join(hdr, blk(fx.a, 0), blk(fx.a, 1), blk(fx.a, 2), make([]byte, len(cut(fx.a, 3)))), map[int]bool{3: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.damaged == nil {
				// Block 3 was sealed partial; stored again at index 4 it is
				// misplaced, and must not read as data.
				if !fx.check(t, c.cipher, nil, false) {
					t.Fatal("not detected")
				}
				return
			}
			if !fx.check(t, c.cipher, c.damaged, true) {
				t.Fatal("not detected")
			}
		})
	}
}

func TestTamperHeaderSlots(t *testing.T) {
	fx := newTamperFixture(t)
	ss := fx.l.SlotSize()
	garbage := fill(ss, 99)
	for _, c := range []struct {
		name   string
		mutate func(c []byte)
		opens  bool
	}{
		{"slot=0,garbage", func(c []byte) { copy(c, garbage) }, true},
		{"slot=1,garbage", func(c []byte) { copy(c[ss:], garbage) }, true},
		{"slot=0,zero", func(c []byte) { clear(c[:ss]) }, true},
		{"slots=both,garbage", func(c []byte) { copy(c, garbage); copy(c[ss:], garbage) }, false},
		{"slot=0,from-other-file", func(c []byte) { copy(c, fx.b[:ss]) }, false},
		{"slot=1,from-other-file,seq-higher", func(c []byte) { copy(c[ss:], fx.b[:ss]) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ct := bytes.Clone(fx.a)
			c.mutate(ct)
			failed := fx.check(t, ct, nil, false)
			if c.opens == failed {
				t.Fatalf("failed=%v, want %v", failed, !c.opens)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	fx := newTamperFixture(t)
	other, err := envelope.NewVolume(envelope.Options{Layout: fx.l, Volume: envelope.VolumeID{9}})
	if err != nil {
		t.Fatal(err)
	}
	big, err := envelope.NewLayout(64<<10, envelope.DefaultSlotSize)
	if err != nil {
		t.Fatal(err)
	}
	bigVol, err := envelope.NewVolume(envelope.Options{Layout: big, Volume: testVolumeID})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		v    *envelope.Volume
		data []byte
		want error
	}{
		{"empty", fx.v, nil, envelope.ErrNoHeader},
		{"short", fx.v, fx.a[:10], envelope.ErrFormat},
		{"other-volume", other, fx.a, envelope.ErrOtherVolume},
		{"other-block-size", bigVol, fx.a, envelope.ErrFormat},
		{"not-kmsfs", fx.v, fill(len(fx.a), 5), envelope.ErrFormat},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.v.Open(context.Background(), memfile.New(c.data), &clearKeys{})
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	t.Run("key-not-available", func(t *testing.T) {
		_, err := fx.v.Open(context.Background(), memfile.New(fx.a), noKeys{})
		if !errors.Is(err, errNoKey) {
			t.Fatalf("got %v, want the unwrapper's error", err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte("header slot")) {
			t.Fatalf("error %q does not say where", err)
		}
	})
}

var errNoKey = fmt.Errorf("no key here")

type noKeys struct{}

func (noKeys) UnwrapKey(context.Context, []stanza.Stanza) ([]byte, error) { return nil, errNoKey }

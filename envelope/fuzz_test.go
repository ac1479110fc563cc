package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// fixedKey unwraps every stanza to one key, so fuzzed headers still reach
// the MAC and block code.
type fixedKey []byte

func (k fixedKey) UnwrapKey(context.Context, []stanza.Stanza) ([]byte, error) {
	return bytes.Clone(k), nil
}

func FuzzParseHeaderSlot(f *testing.F) {
	vs := loadVectors(f)
	for _, v := range vs {
		ss := v.SlotSize
		if v.BlockSize == envelope.DefaultBlockSize {
			f.Add(v.cipher[:ss])
			f.Add(v.cipher[ss : 2*ss])
		}
	}
	l := envelope.DefaultLayout()
	f.Fuzz(func(t *testing.T, slot []byte) {
		h, err := envelope.ParseHeaderSlot(l, slot)
		if err != nil {
			if !errors.Is(err, envelope.ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			return
		}
		if len(h.Stanzas) == 0 || !h.FitsIn(l) {
			t.Fatalf("parsed header has %d stanzas, fits: %v", len(h.Stanzas), h.FitsIn(l))
		}
	})
}

func FuzzOpenFile(f *testing.F) {
	vs := loadVectors(f)
	for _, v := range vs {
		if v.BlockSize == envelope.DefaultBlockSize {
			f.Add(v.cipher)
		}
	}
	v := vs[0]
	key := fixedKey(v.key)
	f.Fuzz(func(t *testing.T, cipher []byte) {
		file, err := v.vol.Open(context.Background(), memfile.New(cipher), key)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("open: %v is not a sentinel error", err)
			}
			return
		}
		size := file.Size()
		if size != v.vol.Layout().PlainSize(int64(len(cipher))) {
			t.Fatalf("size %d disagrees with the ciphertext length", size)
		}
		whole := make([]byte, size+1)
		n, err := file.ReadAt(whole, 0)
		if err != io.EOF && !isSentinel(err) {
			t.Fatalf("read: %v", err)
		}
		// Block-wise reads agree with the whole read where both succeed.
		bs := v.vol.Layout().BlockSize()
		for off := 0; off < int(size); off += bs {
			p := make([]byte, bs)
			m, err := file.ReadAt(p, int64(off))
			if err != nil && err != io.EOF && !isSentinel(err) {
				t.Fatalf("read at %d: %v", off, err)
			}
			if end := min(off+m, n); end > off && !bytes.Equal(p[:end-off], whole[off:end]) {
				t.Fatalf("read at %d disagrees with the whole read", off)
			}
		}
	})
}

// Package envelopetest holds the fixtures that the tests of envelope and of
// the packages built on it (journal) share: an in-memory key source whose
// stanzas carry the data key in the clear, deterministic keys and bytes,
// and volumes and files over in-memory backings. It is for tests only.
package envelopetest

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// VolumeID is the volume ID of NewVolume's volumes.
var VolumeID = envelope.VolumeID{0x76, 0x6f, 0x6c, 1}

// Keys is an in-memory key source for unit tests: a stanza of type "test"
// carries the data key in its body, unwrapped. It counts calls and is safe
// for concurrent use.
type Keys struct{ Calls atomic.Int64 }

// UnwrapKey returns a copy of the body of the first "test" stanza of the
// data-key size, or an error wrapping stanza.ErrNotMine.
func (k *Keys) UnwrapKey(_ context.Context, stanzas []stanza.Stanza) ([]byte, error) {
	k.Calls.Add(1)
	for _, s := range stanzas {
		if s.Type == "test" && len(s.Body) == stanza.DataKeySize {
			return bytes.Clone(s.Body), nil
		}
	}
	return nil, stanza.ErrNotMine
}

// Stanza returns the stanza that Keys unwraps to dk; it keeps dk.
func Stanza(dk []byte) stanza.Stanza {
	return stanza.Stanza{Type: "test", KeyID: "test-key", Body: dk}
}

// DataKey returns a data key derived from b.
func DataKey(b byte) []byte {
	k := make([]byte, stanza.DataKeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// Seeded returns a deterministic random source.
func Seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// Fill returns n deterministic bytes derived from seed.
func Fill(n int, seed uint64) []byte {
	b := make([]byte, n)
	Seeded(seed).Read(b)
	return b
}

// NewVolume returns a Volume of VolumeID with block size blockSize and the
// default slot size, its options changed by opts in turn.
func NewVolume(t testing.TB, blockSize int, opts ...func(*envelope.Options)) *envelope.Volume {
	t.Helper()
	l, err := envelope.NewLayout(blockSize, envelope.DefaultSlotSize)
	if err != nil {
		t.Fatal(err)
	}
	o := envelope.Options{Layout: l, Volume: VolumeID}
	for _, f := range opts {
		f(&o)
	}
	v, err := envelope.NewVolume(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// NewFile creates a File with data key dk over a fresh in-memory backing.
func NewFile(t testing.TB, v *envelope.Volume, dk []byte) (*envelope.File, *memfile.File) {
	t.Helper()
	b := &memfile.File{}
	f, err := v.Create(b, dk, []stanza.Stanza{Stanza(dk)})
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// Reopen opens backing b as a File, its key from Keys.
func Reopen(t testing.TB, v *envelope.Volume, b envelope.Backing) *envelope.File {
	t.Helper()
	f, err := v.Open(context.Background(), b, &Keys{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ReadAll fails t unless f holds exactly want.
func ReadAll(t testing.TB, f *envelope.File, want []byte) {
	t.Helper()
	got := make([]byte, len(want)+1)
	n, err := f.ReadAt(got, 0)
	if err != io.EOF || !bytes.Equal(got[:n], want) {
		t.Fatalf("read %d bytes, %v; content equal: %v", n, err, bytes.Equal(got[:n], want))
	}
}

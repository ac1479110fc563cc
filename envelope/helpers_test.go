package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// clearKeys is an in-memory key source for unit tests: a stanza of type
// "test" carries the data key in its body, unwrapped. It counts calls.
type clearKeys struct{ calls atomic.Int64 }

func (k *clearKeys) UnwrapKey(_ context.Context, stanzas []stanza.Stanza) ([]byte, error) {
	k.calls.Add(1)
	for _, s := range stanzas {
		if s.Type == "test" && len(s.Body) == stanza.DataKeySize {
			return bytes.Clone(s.Body), nil
		}
	}
	return nil, stanza.ErrNotMine
}

func clearStanza(dk []byte) stanza.Stanza {
	return stanza.Stanza{Type: "test", KeyID: "test-key", Body: dk}
}

var testVolumeID = envelope.VolumeID{0x76, 0x6f, 0x6c, 1}

// seeded returns a deterministic random source.
func seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

type volOpt func(*envelope.Options)

func newVolume(t testing.TB, blockSize int, opts ...volOpt) *envelope.Volume {
	t.Helper()
	l, err := envelope.NewLayout(blockSize, envelope.DefaultSlotSize)
	if err != nil {
		t.Fatal(err)
	}
	o := envelope.Options{Layout: l, Volume: testVolumeID}
	for _, f := range opts {
		f(&o)
	}
	v, err := envelope.NewVolume(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func dataKey(b byte) []byte {
	k := make([]byte, stanza.DataKeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// newFile creates a File with data key dk over a fresh in-memory backing.
func newFile(t testing.TB, v *envelope.Volume, dk []byte) (*envelope.File, *memfile.File) {
	t.Helper()
	b := &memfile.File{}
	f, err := v.Create(b, dk, []stanza.Stanza{clearStanza(dk)})
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// reopen opens backing b as a File.
func reopen(t testing.TB, v *envelope.Volume, b envelope.Backing) *envelope.File {
	t.Helper()
	f, err := v.Open(context.Background(), b, &clearKeys{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fill returns n deterministic bytes derived from seed.
func fill(n int, seed uint64) []byte {
	b := make([]byte, n)
	seeded(seed).Read(b)
	return b
}

func isSentinel(err error) bool {
	return errors.Is(err, envelope.ErrAuth) || errors.Is(err, envelope.ErrFormat) ||
		errors.Is(err, envelope.ErrOtherVolume) || errors.Is(err, envelope.ErrNoHeader)
}

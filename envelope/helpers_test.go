package envelope_test

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// The fixtures live in internal/envelopetest, shared with the journal's
// tests; these short names keep the tests readable.

// clearKeys is an in-memory key source: a stanza of type "test" carries
// the data key in its body, unwrapped.
type clearKeys = envelopetest.Keys

func clearStanza(dk []byte) stanza.Stanza { return envelopetest.Stanza(dk) }

var testVolumeID = envelopetest.VolumeID

func seeded(seed uint64) *rand.ChaCha8 { return envelopetest.Seeded(seed) }

type volOpt = func(*envelope.Options)

func newVolume(t testing.TB, blockSize int, opts ...volOpt) *envelope.Volume {
	t.Helper()
	return envelopetest.NewVolume(t, blockSize, opts...)
}

func dataKey(b byte) []byte { return envelopetest.DataKey(b) }

// newFile creates a File with data key dk over a fresh in-memory backing.
func newFile(t testing.TB, v *envelope.Volume, dk []byte) (*envelope.File, *memfile.File) {
	t.Helper()
	return envelopetest.NewFile(t, v, dk)
}

// reopen opens backing b as a File.
func reopen(t testing.TB, v *envelope.Volume, b envelope.Backing) *envelope.File {
	t.Helper()
	return envelopetest.Reopen(t, v, b)
}

func readAll(t *testing.T, f *envelope.File, want []byte) {
	t.Helper()
	envelopetest.ReadAll(t, f, want)
}

func fill(n int, seed uint64) []byte { return envelopetest.Fill(n, seed) }

func isSentinel(err error) bool {
	return errors.Is(err, envelope.ErrAuth) || errors.Is(err, envelope.ErrFormat) ||
		errors.Is(err, envelope.ErrOtherVolume) || errors.Is(err, envelope.ErrNoHeader)
}

// Package keysourcetest provides an in-memory key source and a manual clock
// for tests of kmsfs packages. It is for tests only: its key lives in
// memory, it keeps every key it hands out so tests can check that callers
// clear them, and it offers no protection at all.
package keysourcetest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/keysource"
)

// Op names a key-source operation, for hooks and counters.
type Op int

// Operations of a Source.
const (
	OpWrap Op = iota
	OpUnwrap
	OpGenerate
)

// String returns "wrap", "unwrap" or "generate".
func (o Op) String() string {
	switch o {
	case OpWrap:
		return "wrap"
	case OpUnwrap:
		return "unwrap"
	case OpGenerate:
		return "generate"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Options configure a Source.
type Options struct {
	// Type is the stanza type; "" means "fake".
	Type string
	// KeyID is the key ID; "" means "fake-key".
	KeyID string
	// Hook, if set, runs at the start of every operation, after it is
	// counted. It may block (on a channel, honouring ctx) to inject
	// latency or hold calls back, and a non-nil result is returned as the
	// operation's error. It must be safe for concurrent use.
	Hook func(ctx context.Context, op Op) error
	// Rand supplies the wrapping key, nonces and generated data keys; nil
	// means crypto/rand.Reader.
	Rand io.Reader
}

// Source is an in-memory keysource.KeySource for tests. A stanza body is
// nonce ‖ AES-256-GCM(data key) under a random key of the Source, with the
// key ID as additional data; a stanza of another type or key ID is
// ErrNotMine, and a body that fails to open is ErrInvalid.
//
// A Source counts its calls and keeps a reference to every data key it
// returns (Returned), so tests can see whether the caller cleared them. It
// is safe for concurrent use.
type Source struct {
	typ, keyID string
	hook       func(context.Context, Op) error
	rand       io.Reader
	aead       cipher.AEAD
	calls      [3]atomic.Int64

	mu       sync.Mutex
	returned [][]byte
}

// Generating is a Source that is also a keysource.Generator, like a KMS
// that generates data keys.
type Generating struct{ *Source }

var (
	_ keysource.KeySource = (*Source)(nil)
	_ keysource.Generator = Generating{}
)

// New returns a Source without GenerateDataKey. It panics if o.Rand fails.
func New(o Options) *Source {
	s := &Source{typ: o.Type, keyID: o.KeyID, hook: o.Hook, rand: o.Rand}
	if s.typ == "" {
		s.typ = "fake"
	}
	if s.keyID == "" {
		s.keyID = "fake-key"
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	var k [32]byte
	if _, err := io.ReadFull(s.rand, k[:]); err != nil {
		panic("keysourcetest: " + err.Error())
	}
	blk, err := aes.NewCipher(k[:])
	if err != nil {
		panic("keysourcetest: " + err.Error())
	}
	s.aead, err = cipher.NewGCM(blk)
	if err != nil {
		panic("keysourcetest: " + err.Error())
	}
	return s
}

// NewGenerating returns a Source that also generates data keys.
func NewGenerating(o Options) Generating { return Generating{New(o)} }

// Type returns the stanza type.
func (s *Source) Type() string { return s.typ }

// KeyID returns the key ID.
func (s *Source) KeyID() string { return s.keyID }

func (s *Source) begin(ctx context.Context, op Op) error {
	s.calls[op].Add(1)
	if s.hook != nil {
		return s.hook(ctx, op)
	}
	return nil
}

// Wrap wraps dataKey, which stays the caller's.
func (s *Source) Wrap(ctx context.Context, dataKey []byte) (keysource.Stanza, error) {
	if err := s.begin(ctx, OpWrap); err != nil {
		return keysource.Stanza{}, err
	}
	return s.wrap(dataKey)
}

func (s *Source) wrap(dataKey []byte) (keysource.Stanza, error) {
	if len(dataKey) != keysource.DataKeySize {
		return keysource.Stanza{}, fmt.Errorf("keysourcetest: data key is %d bytes: %w", len(dataKey), keysource.ErrInvalid)
	}
	body := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(dataKey)+s.aead.Overhead())
	if _, err := io.ReadFull(s.rand, body); err != nil {
		return keysource.Stanza{}, err
	}
	body = s.aead.Seal(body, body, dataKey, []byte(s.keyID))
	return keysource.Stanza{Type: s.typ, KeyID: s.keyID, Body: body}, nil
}

// Unwrap returns the data key in st. The Source keeps a reference to the
// result (see Returned).
func (s *Source) Unwrap(ctx context.Context, st keysource.Stanza) ([]byte, error) {
	if st.Type != s.typ || st.KeyID != s.keyID {
		return nil, fmt.Errorf("keysourcetest: stanza %v is not for %s:%s: %w", st, s.typ, s.keyID, keysource.ErrNotMine)
	}
	if err := s.begin(ctx, OpUnwrap); err != nil {
		return nil, err
	}
	n := s.aead.NonceSize()
	if len(st.Body) < n {
		return nil, fmt.Errorf("keysourcetest: stanza %v: short body: %w", st, keysource.ErrInvalid)
	}
	key, err := s.aead.Open(nil, st.Body[:n], st.Body[n:], []byte(s.keyID))
	if err != nil {
		return nil, fmt.Errorf("keysourcetest: stanza %v does not open: %w", st, keysource.ErrInvalid)
	}
	s.keep(key)
	return key, nil
}

// GenerateDataKey returns a fresh data key and its stanza. The Source
// keeps a reference to the key (see Returned).
func (g Generating) GenerateDataKey(ctx context.Context) ([]byte, keysource.Stanza, error) {
	if err := g.begin(ctx, OpGenerate); err != nil {
		return nil, keysource.Stanza{}, err
	}
	key := make([]byte, keysource.DataKeySize)
	if _, err := io.ReadFull(g.rand, key); err != nil {
		return nil, keysource.Stanza{}, err
	}
	st, err := g.wrap(key)
	if err != nil {
		return nil, keysource.Stanza{}, err
	}
	g.keep(key)
	return key, st, nil
}

func (s *Source) keep(key []byte) {
	s.mu.Lock()
	s.returned = append(s.returned, key)
	s.mu.Unlock()
}

// Calls returns how many times op was called (Unwrap calls for stanzas of
// another type or key ID are not counted: a real source answers those
// without a service call).
func (s *Source) Calls(op Op) int64 { return s.calls[op].Load() }

// ResetCalls sets every counter to zero.
func (s *Source) ResetCalls() {
	for i := range s.calls {
		s.calls[i].Store(0)
	}
}

// Returned returns the data keys handed out by Unwrap and GenerateDataKey
// so far, oldest first. They alias what the caller got: a caller that
// clears a key clears it here too.
func (s *Source) Returned() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.returned...)
}

// Package local is the key source for a key held on this machine: a file of
// 32 random bytes, or a passphrase stretched with scrypt. It needs no
// network, for offline use and demos. A Source is made by
// Open(ctx, spec, Options), as every kmsfs key source is.
//
// Both forms derive two values from their 32-byte master key with
// HKDF-SHA256: a wrapping key and a key ID that names the key without
// revealing it. A stanza wraps a data key with AES-256-GCM under the
// wrapping key, with the volume ID as additional data, so a stanza copied
// from another volume does not open:
//
//	type   "local"
//	key ID "file:" or "passphrase:" + 16 hex digits of
//	       HKDF-SHA256(master, salt = none, info = "kmsfs local v1 key id")
//	body   nonce (12) ‖ AES-256-GCM ciphertext of the data key (32) ‖ tag (16)
//	       key = HKDF-SHA256(master, salt = none, info = "kmsfs local v1 wrap key")
//	       additional data = volume ID (16)
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/keysource"
)

// Type is the stanza type of local keys.
const Type = "local"

// PassphraseEnv is the environment variable read for the passphrase.
const PassphraseEnv = "KMSFS_PASSPHRASE"

const (
	masterSize = 32
	nonceSize  = 12
	tagSize    = 16
	bodySize   = nonceSize + keysource.DataKeySize + tagSize

	labelWrapKey = "kmsfs local v1 wrap key"
	labelKeyID   = "kmsfs local v1 key id"

	prefixFile       = "file:"
	prefixPassphrase = "passphrase:"
)

// Options configure a Source (see Open). Only VolumeID and Rand matter to
// a key file; the rest configure the passphrase form.
type Options struct {
	// VolumeID is the volume's 128-bit ID, bound into every stanza.
	VolumeID [16]byte
	// Rand supplies nonces; nil means crypto/rand.Reader.
	Rand io.Reader

	// KDF holds the passphrase parameters stored in kmsfs.conf (made by
	// NewKDFParams at init). The passphrase form requires them.
	KDF KDFParams
	// PassphraseFile names a file holding the passphrase (one trailing
	// newline is dropped). It wins over the environment variable.
	PassphraseFile string
	// Prompt asks the user for the passphrase when neither PassphraseFile
	// nor KMSFS_PASSPHRASE gives one; the CLI supplies a terminal prompt.
	// The Source clears the slice it returns once the key is derived.
	Prompt func() ([]byte, error)
	// LookupEnv reads the environment; nil means os.LookupEnv.
	LookupEnv func(key string) (string, bool)
	// Mem holds the wrapping key (and the master key while it is
	// derived): locked memory, zeroed by Close. nil keeps them on the Go
	// heap.
	Mem *secmem.Arena
	// AllowWeakKDF accepts KDF parameters below MinScryptLogN and
	// MinScryptR, for unit tests that need a cheap KDF. The CLI never sets
	// it: a weakened kmsfs.conf must not load.
	AllowWeakKDF bool
}

// Source is a local key: it wraps and unwraps data keys for one volume. It
// is safe for concurrent use. It keeps the derived wrapping key in a cell
// of Options.Mem until Close, and expands it into an AES-GCM key schedule
// for each call only: Go's crypto/aes keeps schedules on the heap, where
// they cannot be locked or zeroed, so none is kept for the Source's life.
type Source struct {
	keyID  string
	volume [16]byte
	rand   io.Reader
	mem    *secmem.Arena
	detail string // for Describe: warnings and the key's form

	mu      sync.RWMutex
	wrapKey []byte // cell of mem; nil after Close
}

var (
	_ keysource.KeySource = (*Source)(nil)
	_ keysource.Describer = (*Source)(nil)
)

// Open returns the Source for spec, bound to o.VolumeID. spec.Value
// "passphrase" (the spec "local:passphrase") is the passphrase form: the
// passphrase comes from o.PassphraseFile if set, else from
// KMSFS_PASSPHRASE, else from o.Prompt, never from a command-line
// argument, and is stretched with o.KDF. Any other value is the path of a
// key file of exactly 32 bytes, as `head -c 32 /dev/urandom > path`
// writes; write "local:./passphrase" for a key file of that name.
//
// A key file or passphrase file that any user may write is refused:
// whoever can replace it can read every file created afterwards. A key
// file that group or others may read, or group may write, is accepted (a
// shared demo key is a valid use), and Describe says so in
// KeyState.Detail for the CLI to show. Errors wrap keysource.ErrInvalid
// and name the file and the cause, never the key or the passphrase.
//
// ctx is not used: a local key needs no network. The caller closes the
// Source.
func Open(_ context.Context, spec keysource.Spec, o Options) (*Source, error) {
	if spec.Type != Type {
		return nil, fmt.Errorf("local: key spec %v is not local: %w", spec, keysource.ErrInvalid)
	}
	if spec.Value == "passphrase" {
		return openPassphrase(o)
	}
	return openKeyFile(spec.Value, o)
}

// newSource derives the wrapping key and key ID from master, which stays
// the caller's.
func newSource(master []byte, prefix string, o Options) (*Source, error) {
	derived, err := hkdf.Key(sha256.New, master, nil, labelWrapKey, 32)
	if err != nil {
		return nil, err
	}
	wrapKey := o.Mem.Clone(derived)
	clear(derived)
	id, err := hkdf.Key(sha256.New, master, nil, labelKeyID, 8)
	if err != nil {
		o.Mem.Free(wrapKey)
		return nil, err
	}
	s := &Source{keyID: prefix + hex.EncodeToString(id), volume: o.VolumeID, rand: o.Rand, mem: o.Mem, wrapKey: wrapKey}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	return s, nil
}

// Close zeroes the wrapping key and returns its cell; later calls fail
// with keysource.ErrInvalid. Close is idempotent and returns nil.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mem.Free(s.wrapKey)
	s.wrapKey = nil
	return nil
}

// aead runs f with an AES-256-GCM under the wrapping key. The read lock
// keeps Close from zeroing the key under a call.
func (s *Source) aead(f func(cipher.AEAD) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.wrapKey == nil {
		return fmt.Errorf("local: key %s is closed: %w", s.keyID, keysource.ErrInvalid)
	}
	blk, err := aes.NewCipher(s.wrapKey)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return err
	}
	return f(aead)
}

// Type returns "local".
func (s *Source) Type() string { return Type }

// KeyID returns the key's fingerprint: "file:" or "passphrase:" and 16 hex
// digits.
func (s *Source) KeyID() string { return s.keyID }

// Wrap returns a stanza holding dataKey (which stays the caller's) under
// the local key and the volume ID.
func (s *Source) Wrap(_ context.Context, dataKey []byte) (keysource.Stanza, error) {
	if len(dataKey) != keysource.DataKeySize {
		return keysource.Stanza{}, fmt.Errorf("local: data key is %d bytes, want %d: %w",
			len(dataKey), keysource.DataKeySize, keysource.ErrInvalid)
	}
	body := make([]byte, nonceSize, bodySize)
	if _, err := io.ReadFull(s.rand, body); err != nil {
		return keysource.Stanza{}, fmt.Errorf("local: nonce: %w", err)
	}
	if err := s.aead(func(a cipher.AEAD) error {
		body = a.Seal(body, body, dataKey, s.volume[:])
		return nil
	}); err != nil {
		return keysource.Stanza{}, err
	}
	return keysource.Stanza{Type: Type, KeyID: s.keyID, Body: body}, nil
}

// Unwrap returns the data key held by st; the caller owns it. A stanza of
// another type or key (another key file, a wrong passphrase) wraps
// ErrNotMine; one that does not open under this key and volume wraps
// ErrInvalid.
func (s *Source) Unwrap(_ context.Context, st keysource.Stanza) ([]byte, error) {
	if st.Type != Type {
		return nil, fmt.Errorf("local: stanza %v is not a local stanza: %w", st, keysource.ErrNotMine)
	}
	if st.KeyID != s.keyID {
		hint := "another key"
		switch {
		case strings.HasPrefix(st.KeyID, prefixPassphrase) && strings.HasPrefix(s.keyID, prefixPassphrase):
			hint = "another passphrase (wrong passphrase?)"
		case strings.HasPrefix(st.KeyID, prefixPassphrase):
			hint = "a passphrase, not a key file"
		case strings.HasPrefix(st.KeyID, prefixFile) && strings.HasPrefix(s.keyID, prefixPassphrase):
			hint = "a key file, not a passphrase"
		case strings.HasPrefix(st.KeyID, prefixFile):
			hint = "another key file"
		}
		return nil, fmt.Errorf("local: stanza %v was wrapped under %s, this key is %s: %w", st, hint, s.keyID, keysource.ErrNotMine)
	}
	if len(st.Body) != bodySize {
		return nil, fmt.Errorf("local: stanza %v: body is %d bytes, want %d: %w", st, len(st.Body), bodySize, keysource.ErrInvalid)
	}
	var key []byte
	var opened error
	if err := s.aead(func(a cipher.AEAD) error {
		key, opened = a.Open(make([]byte, 0, keysource.DataKeySize), st.Body[:nonceSize], st.Body[nonceSize:], s.volume[:])
		return nil
	}); err != nil {
		return nil, err
	}
	if opened != nil {
		return nil, fmt.Errorf("local: stanza %v does not open under this key and volume (damaged, or from another volume?): %w",
			st, keysource.ErrInvalid)
	}
	return key, nil
}

// Describe reports the key as usable, with any warning about its key file
// in Detail.
func (s *Source) Describe(context.Context) (keysource.KeyState, error) {
	return keysource.KeyState{KeyID: s.keyID, State: "Enabled", Usable: true, Detail: s.detail}, nil
}

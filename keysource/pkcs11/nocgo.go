//go:build !cgo

package pkcs11

import (
	"context"
	"fmt"

	"github.com/kmsfs/kmsfs/keysource"
)

// A build without cgo cannot load a PKCS#11 module, which is a C library.
// This file keeps the package's API so that the rest of kmsfs (local and
// AWS KMS keys) builds with CGO_ENABLED=0, as a static binary or for
// another architecture without a C cross-compiler; only Open is left, and
// it says why.

var (
	_ keysource.KeySource = (*Source)(nil)
	_ keysource.Describer = (*Source)(nil)
)

// Loader is, in a build without cgo, a placeholder: Open fails whatever
// Loader it is given. It is safe for concurrent use and needs no closing.
type Loader struct{}

// NewLoader returns a Loader.
func NewLoader() *Loader { return &Loader{} }

// Source is, in a build without cgo, never returned: Open always fails.
// Its methods fail as Open does.
type Source struct{}

// Open fails in a build without cgo: it returns an error wrapping
// keysource.ErrInvalid that names the key and says to rebuild with cgo.
// A spec of another type fails as in a cgo build.
func Open(_ context.Context, spec keysource.Spec, _ Options) (*Source, error) {
	if spec.Type != Type {
		return nil, fmt.Errorf("pkcs11: key spec of type %q, want %q: %w", spec.Type, Type, keysource.ErrInvalid)
	}
	// A URI that does not parse may hold a mistyped PIN, so only a
	// parsed URI's key ID is named.
	key := "key"
	if u, err := ParseURI(spec.Value); err == nil {
		key = "key " + u.KeyID()
	}
	return nil, fmt.Errorf("pkcs11: %s: %w", key, errNoCgo)
}

// errNoCgo is the cause of every failure in a build without cgo.
var errNoCgo = fmt.Errorf("kmsfs was built without PKCS#11 support (CGO_ENABLED=0); rebuild with cgo to use pkcs11: keys: %w", keysource.ErrInvalid)

// Type returns "pkcs11".
func (s *Source) Type() string { return Type }

// KeyID returns "".
func (s *Source) KeyID() string { return "" }

// Wrap fails: see Open.
func (s *Source) Wrap(context.Context, []byte) (keysource.Stanza, error) {
	return keysource.Stanza{}, fmt.Errorf("pkcs11: %w", errNoCgo)
}

// Unwrap fails: see Open.
func (s *Source) Unwrap(context.Context, keysource.Stanza) ([]byte, error) {
	return nil, fmt.Errorf("pkcs11: %w", errNoCgo)
}

// Describe fails: see Open.
func (s *Source) Describe(context.Context) (keysource.KeyState, error) {
	return keysource.KeyState{}, fmt.Errorf("pkcs11: %w", errNoCgo)
}

// Close does nothing.
func (s *Source) Close() error { return nil }

package keysource

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// KeySource wraps and unwraps data keys with one key (a KMS key, a token
// key, a local key). A source is bound to one volume when it is built: it
// binds the volume ID into every wrap (AWS encryption context, GCM
// additional data) and checks it on every unwrap.
//
// Implementations are safe for concurrent use.
type KeySource interface {
	// Type returns the stanza type the source writes and reads.
	Type() string
	// KeyID returns the key ID the source writes into its stanzas (for
	// AWS the resolved key ARN).
	KeyID() string
	// Wrap returns a stanza holding dataKey wrapped under the source's key.
	// dataKey stays the caller's.
	Wrap(ctx context.Context, dataKey []byte) (Stanza, error)
	// Unwrap returns the data key held by s; the caller owns the result
	// and clears it (the Manager copies it into locked memory and clears
	// it at once, so a source may return its client's own slice, such as
	// an SDK answer's plaintext). It returns an error wrapping ErrNotMine
	// if s is not of this source's type and key; any other error is fatal
	// for s.
	Unwrap(ctx context.Context, s Stanza) ([]byte, error)
}

// Generator is a KeySource that can generate a data key inside the key
// service and return it with its wrapped copy in one call (AWS
// GenerateDataKey). The caller owns and clears dataKey, as with Unwrap.
type Generator interface {
	GenerateDataKey(ctx context.Context) (dataKey []byte, s Stanza, err error)
}

// ReEncrypter is a KeySource that can move one of its stanzas to another key of the
// same service without the data key leaving the service (AWS KMS ReEncrypt).
type ReEncrypter interface {
	// ReEncrypt returns a stanza for key `to` holding the data key of s. It returns an
	// error wrapping ErrNotMine when s is not this source's stanza or `to` is not a
	// key this source can re-encrypt to (another service), so the caller falls back
	// to Unwrap + Wrap.
	ReEncrypt(ctx context.Context, s Stanza, to KeySource) (Stanza, error)
}

// Describer is a KeySource that can report the state of its key.
type Describer interface {
	Describe(ctx context.Context) (KeyState, error)
}

// KeyState describes a key as its service reports it.
type KeyState struct {
	KeyID   string // resolved key ID (AWS: key ARN)
	State   string // service's word: "Enabled", "Disabled", "PendingDeletion", …
	Usable  bool   // the key can wrap and unwrap now
	Deletes time.Time
	// Detail is a human sentence for whatever the user should know
	// (pending deletion date, public-key-only mode, key spec).
	Detail string
}

// Spec is a key specification as the CLI takes it: "awskms:alias/NAME",
// "pkcs11:token=T;object=K?module-path=…&pin-source=…", "local:/path/key",
// "local:passphrase".
type Spec struct {
	Type  string // "awskms", "pkcs11", "local"
	Value string // everything after the first colon
}

// ParseSpec splits a key specification into its type and value.
func ParseSpec(s string) (Spec, error) {
	t, v, ok := strings.Cut(s, ":")
	switch {
	case !ok || v == "":
		return Spec{}, fmt.Errorf("keysource: key spec %q: want TYPE:VALUE (awskms:…, pkcs11:…, local:…): %w", s, ErrInvalid)
	case t != "awskms" && t != "pkcs11" && t != "local":
		return Spec{}, fmt.Errorf("keysource: key spec type %q: want awskms, pkcs11 or local: %w", t, ErrInvalid)
	}
	if t == "pkcs11" {
		v = s // an RFC 7512 URI keeps its scheme
	}
	return Spec{Type: t, Value: v}, nil
}

// String returns the spec as the CLI takes it.
func (s Spec) String() string {
	if s.Type == "pkcs11" {
		return s.Value
	}
	return s.Type + ":" + s.Value
}

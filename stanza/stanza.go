// Package stanza holds what a file header and a key source must agree on:
// the self-describing Stanza that carries one wrapped copy of a file's data
// key, the data-key size, and the sentinel errors by which a key source
// tells "this stanza is not mine" apart from failures a user must fix.
//
// It is a leaf: it imports only the standard library, so that the file
// format (package envelope) can name stanzas without depending on the key
// sources. Package keysource re-exports every name here.
package stanza

import (
	"errors"
	"fmt"
)

// DataKeySize is the length in bytes of every data key: an AES-256 key.
const DataKeySize = 32

// Stanza is one wrapped copy of a file's data key, as a file header stores it.
// Type names the key source ("awskms", "pkcs11", "local"), KeyID the key that
// wrapped it (for AWS the resolved key ARN, never an alias), and Body the
// wrapped data key, opaque to everything but that source.
//
// A Stanza is a value: whoever builds one owns Body and must not change it
// after handing it on.
type Stanza struct {
	Type  string
	KeyID string
	Body  []byte
}

// String describes the stanza by type and key ID; it never prints Body.
func (s Stanza) String() string { return fmt.Sprintf("%s:%s", s.Type, s.KeyID) }

// Sentinel errors. Key sources wrap them with %w and context; callers test
// them with errors.Is. Their messages name keysource, the package users
// meet them through.
var (
	// ErrNotMine means the stanza belongs to another source or key: the
	// caller should try the next stanza. Every other error is fatal for
	// the stanza.
	ErrNotMine = errors.New("keysource: stanza not for this key")
	// ErrUnavailable means the key service could not be reached or did not
	// answer in time; retrying later may succeed.
	ErrUnavailable = errors.New("keysource: key service unavailable")
	// ErrDenied means the key service refused: access denied, key disabled
	// or pending deletion.
	ErrDenied = errors.New("keysource: key use denied")
	// ErrInvalid means the stanza or key is malformed, or the wrapped key
	// failed to authenticate under the expected context.
	ErrInvalid = errors.New("keysource: invalid key or stanza")
)

// Package keysource defines how kmsfs obtains data keys: the KeySource
// interfaces that AWS KMS, PKCS#11 tokens and local keys implement, the
// self-describing Stanza that a file header stores, and the sentinel errors
// that tell "this stanza is not mine" apart from failures a user must fix.
//
// Stanza, DataKeySize and the sentinel errors are defined in the leaf
// package stanza, which the file format (envelope) imports without
// depending on key sources; they are re-exported here under their old
// names. The package never logs and never imports go-fuse.
package keysource

import "github.com/kmsfs/kmsfs/stanza"

// DataKeySize is the length in bytes of every data key: an AES-256 key.
const DataKeySize = stanza.DataKeySize

// Stanza is one wrapped copy of a file's data key, as a file header stores
// it (see stanza.Stanza).
type Stanza = stanza.Stanza

// Sentinel errors, the same values as package stanza's. Key sources wrap
// them with %w and context; callers test them with errors.Is.
var (
	// ErrNotMine means the stanza belongs to another source or key: the
	// caller should try the next stanza. Every other error is fatal for
	// the stanza.
	ErrNotMine = stanza.ErrNotMine
	// ErrUnavailable means the key service could not be reached or did not
	// answer in time; retrying later may succeed.
	ErrUnavailable = stanza.ErrUnavailable
	// ErrDenied means the key service refused: access denied, key disabled
	// or pending deletion.
	ErrDenied = stanza.ErrDenied
	// ErrInvalid means the stanza or key is malformed, or the wrapped key
	// failed to authenticate under the expected context.
	ErrInvalid = stanza.ErrInvalid
)

package names

import "errors"

// Sentinel errors. Functions wrap them with %w and the backing name; test
// them with errors.Is. None says which part of authentication failed.
var (
	// ErrLong means Decrypt was given the backing name of a long name: the
	// caller reads its side file (backing + LongSuffix) and calls
	// DecryptLong.
	ErrLong = errors.New("names: long name, held in a side file")
	// ErrInvalidName means the input is not something this package writes:
	// a plaintext name or target that may not be stored (empty, too long,
	// with '/' or NUL, "." or ".."), or a backing name, side file,
	// encoded target or DirIDFile of the wrong form, length or padding.
	ErrInvalidName = errors.New("names: invalid name")
	// ErrAuth means a backing name, side file or encoded target failed
	// authentication: it was changed, moved to another directory, swapped
	// with another entry's, or written under another key.
	ErrAuth = errors.New("names: authentication failed")
)

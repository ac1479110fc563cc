package envelope

import (
	"errors"
	"fmt"
)

// Sentinel errors. Functions wrap them with %w and context ("block 7: …");
// test them with errors.Is. Messages never say which part of an
// authentication check failed.
var (
	// ErrFormat means the bytes are not a cipher file this version can
	// read: bad magic, unknown version, a layout that differs from the
	// volume's, or a header cut short.
	ErrFormat = errors.New("envelope: not a valid kmsfs file")
	// ErrAuth means stored bytes failed authentication: the header or a
	// block was changed, moved, swapped or cut.
	ErrAuth = errors.New("envelope: authentication failed")
	// ErrOtherVolume means the file's header names another volume.
	ErrOtherVolume = errors.New("envelope: file belongs to another volume")
	// ErrNoHeader means the cipher file is empty and has no header yet; the
	// caller creates one (Volume.Create) before writing.
	ErrNoHeader = errors.New("envelope: file has no header")
	// ErrClosed means the File was closed.
	ErrClosed = errors.New("envelope: file closed")
)

// BlockError is a failure of one content block: Block is its index, Err
// the cause (ErrAuth). errors.As finds it, so callers can log the block.
type BlockError struct {
	Block int64
	Err   error
}

func (e *BlockError) Error() string { return fmt.Sprintf("block %d: %v", e.Block, e.Err) }

// Unwrap returns the cause.
func (e *BlockError) Unwrap() error { return e.Err }

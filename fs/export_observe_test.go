package fs

import "github.com/hanwen/go-fuse/v2/fuse"

// Observed is the raw filesystem a mount with Options.Observer serves
// through, for the tests.
func Observed(raw fuse.RawFileSystem, obs Observer) fuse.RawFileSystem {
	return &observed{RawFileSystem: raw, obs: obs}
}

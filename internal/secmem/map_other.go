//go:build !linux

package secmem

import "errors"

// mapChunk allocates from the Go heap where no mapping is implemented; the
// collector does not move heap objects, so cells keep their addresses.
func mapChunk(n int) ([]byte, error) { return make([]byte, n), nil }

// lockMem reports that locking is not implemented: cells are still zeroed
// on Free.
func lockMem([]byte) error { return errors.New("memory locking is not implemented on this platform") }

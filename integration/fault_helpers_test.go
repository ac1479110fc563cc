package integration_test

import (
	"fmt"
	mrand "math/rand/v2"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ftSoak reports whether the long versions run (KMSFS_SOAK=1).
func ftSoak() bool { return os.Getenv("KMSFS_SOAK") == "1" }

// ftBytes returns n bytes drawn from r.
func ftBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		x := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j] = byte(x)
			x >>= 8
		}
	}
	return b
}

// ftBlocks is a file read back block by block through the mount.
type ftBlocks struct {
	Data []byte          // the plaintext, zeros in place of bad blocks
	Bad  map[int64]error // blocks whose read failed (an errno, or a short read)
}

// ftReadBlocks opens p and reads it one block of bs bytes at a time with
// O_DIRECT, so that each read(2) is one request to the daemon (no page
// cache, no readahead) and a failed block fails only its own read. It
// returns an error only if p cannot be opened or stat'ed.
func ftReadBlocks(p string, bs int) (*ftBlocks, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	r := &ftBlocks{Data: make([]byte, size), Bad: map[int64]error{}}
	buf := make([]byte, bs)
	for i := int64(0); i*int64(bs) < size; i++ {
		want := min(int64(bs), size-i*int64(bs))
		n, err := unix.Pread(int(f.Fd()), buf, i*int64(bs))
		switch {
		case err != nil:
			r.Bad[i] = err
		case int64(n) != want:
			r.Bad[i] = fmt.Errorf("short read: %d of %d bytes", n, want)
		default:
			copy(r.Data[i*int64(bs):], buf[:n])
		}
	}
	return r, nil
}

// ftRand returns a deterministic random source for test data.
func ftRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, 0x6b6d7366)) }

//go:build linux

package secmem

import "syscall"

// Advice values that package syscall does not name.
const (
	madvDontdump   = 16 // MADV_DONTDUMP: leave the pages out of core dumps
	madvWipeonfork = 18 // MADV_WIPEONFORK: a forked child sees zeros
)

// mapChunk maps n bytes of private anonymous memory, kept out of core
// dumps. The advice calls are best effort (older kernels lack them).
func mapChunk(n int) ([]byte, error) {
	mem, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, err
	}
	_ = syscall.Madvise(mem, madvDontdump)
	_ = syscall.Madvise(mem, madvWipeonfork)
	return mem, nil
}

// lockMem keeps mem in RAM. It fails for an ordinary user beyond
// RLIMIT_MEMLOCK; root (CAP_IPC_LOCK) is not limited.
func lockMem(mem []byte) error { return syscall.Mlock(mem) }

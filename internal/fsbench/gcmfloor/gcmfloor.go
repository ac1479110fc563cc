// Package gcmfloor measures the AES-GCM floor of a read through kmsfs: the
// CPU time one thread spends opening sealed blocks in process, with the
// AES-GCM implementation envelope chooses in this environment, and with no
// I/O and no copies around it. No daemon can read a GiB of kmsfs files for
// less than opening a GiB of blocks costs, so fsbench prints this floor
// next to the daemon CPU that kmsfs spends over the loopback on its
// sequential read: their quotient says how close the read is to what
// decryption alone costs.
package gcmfloor

import (
	"crypto/rand"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
)

// GiB is the unit of Result.PerGiB.
const GiB = 1 << 30

// Implementation names, as kmsfs mount logs them in its gcm field.
const (
	ImplWide = "vaesgcm"
	ImplStd  = "crypto/cipher"
)

// Result is one measurement.
type Result struct {
	// Impl is the AES-GCM implementation that opened the blocks: ImplWide
	// or ImplStd.
	Impl string `json:"impl"`
	// Reason says why codecs use ImplStd; empty for ImplWide.
	Reason string `json:"reason,omitempty"`
	// BlockSize and RequestSize are the block and request sizes opened.
	BlockSize   int `json:"block_size"`
	RequestSize int `json:"request_size"`
	// Bytes is the plaintext opened in all.
	Bytes int64 `json:"bytes"`
	// CPUSeconds is the opening thread's CPU time (user and system).
	CPUSeconds float64 `json:"cpu_seconds"`
}

// PerGiB returns the CPU seconds per GiB of plaintext opened.
func (r Result) PerGiB() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return r.CPUSeconds * GiB / float64(r.Bytes)
}

// Measure seals one request of reqSize plaintext bytes in blocks of
// blockSize under a random key, then opens it again and again until total
// bytes have been opened, serially on one locked OS thread, and returns
// that thread's CPU time for the opens. The request stays in the caches,
// as a READ's ciphertext does right after the daemon's pread of it, so
// what is measured is decrypting and authenticating alone. reqSize must
// be a positive multiple of blockSize, and total a multiple of reqSize.
// Measure is safe for concurrent use, but concurrent measurements share
// the cores and caches.
func Measure(blockSize, reqSize int, total int64) (Result, error) {
	if blockSize <= 0 || reqSize <= 0 || reqSize%blockSize != 0 || total <= 0 || total%int64(reqSize) != 0 {
		return Result{}, fmt.Errorf("gcmfloor: request of %d bytes in blocks of %d, %d bytes in all: want a positive multiple of the block size, and a whole number of requests", reqSize, blockSize, total)
	}
	st, err := envelope.GCM()
	if err != nil {
		return Result{}, fmt.Errorf("gcmfloor: %w", err)
	}
	r := Result{Impl: ImplWide, BlockSize: blockSize, RequestSize: reqSize}
	if !st.Wide {
		r.Impl, r.Reason = ImplStd, st.Reason
	}
	l, err := envelope.NewLayout(blockSize, envelope.DefaultSlotSize)
	if err != nil {
		return Result{}, fmt.Errorf("gcmfloor: %w", err)
	}
	// Serial, as the mount opens a request on two cores, and as the
	// floor is defined: helpers would add the cost of starting and
	// joining goroutines.
	v, err := envelope.NewVolume(envelope.Options{Layout: l, Workers: 1, ParallelMin: -1})
	if err != nil {
		return Result{}, fmt.Errorf("gcmfloor: %w", err)
	}
	key := make([]byte, 32)
	var id envelope.FileID
	plain := make([]byte, reqSize)
	for _, b := range [][]byte{key, id[:], plain} {
		if _, err := rand.Read(b); err != nil {
			return Result{}, fmt.Errorf("gcmfloor: random: %w", err)
		}
	}
	c, err := v.NewCodec(key, id)
	clear(key)
	if err != nil {
		return Result{}, fmt.Errorf("gcmfloor: %w", err)
	}
	// No block of the request is the file's last: fileLast lies beyond.
	fileLast := int64(reqSize/blockSize) + 1
	sealed := make([]byte, l.SealedLen(reqSize))
	if err := c.Seal(sealed, plain, 0, fileLast); err != nil {
		return Result{}, fmt.Errorf("gcmfloor: seal: %w", err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0, err := threadCPU()
	if err != nil {
		return Result{}, err
	}
	for r.Bytes < total {
		if _, err := c.Open(plain, sealed, 0, fileLast); err != nil {
			return Result{}, fmt.Errorf("gcmfloor: open: %w", err)
		}
		r.Bytes += int64(reqSize)
	}
	t1, err := threadCPU()
	if err != nil {
		return Result{}, err
	}
	r.CPUSeconds = t1 - t0
	return r, nil
}

// threadCPU returns the calling thread's CPU time in seconds.
func threadCPU() (float64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("gcmfloor: thread CPU clock: %w", err)
	}
	return float64(ts.Nano()) / 1e9, nil
}

// Package secmem allocates memory for key material: fixed-size cells in
// pages of their own, locked into RAM where the platform and
// RLIMIT_MEMLOCK allow (so a key is never written to swap), left out of
// core dumps, and zeroed when freed.
//
// An Arena hands out cells of two sizes: CellSmall bytes for keys (an
// AES-256 data key, a key-encryption key) and CellLarge bytes for larger
// secrets such as expanded AES/GCM key schedules. Pages are mapped in
// chunks as cells are needed and are never returned to the system: a freed
// cell is zeroed and kept on a free list for the next Alloc, so a long-lived
// process reaches a steady state of locked pages.
//
// A nil *Arena is valid: it allocates from the Go heap and still zeroes on
// Free, for tests and tools that need no locking.
package secmem

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"unsafe"
)

// Cell sizes. CellSmall holds a 32-byte key; CellLarge holds an AES-256 key
// schedule with its GHASH tables (vaesgcm's takes 1504 bytes).
const (
	CellSmall = 32
	CellLarge = 2048
)

// chunkSize is how much an arena maps at once: four pages, small enough to
// fit the 64 KiB RLIMIT_MEMLOCK that older kernels give ordinary users.
const chunkSize = 16 << 10

// ErrNotLocked is wrapped by the error an Arena reports when it could not
// lock a chunk: the cells still work and are still zeroed on Free, but the
// kernel may write them to swap.
var ErrNotLocked = errors.New("secmem: key memory not locked")

// Options configure an Arena.
type Options struct {
	// OnLockError, if set, is called once, with an error wrapping
	// ErrNotLocked, the first time a chunk cannot be locked (typically
	// RLIMIT_MEMLOCK is too low for an ordinary user). It is called with
	// the arena's lock held and must not call back into the arena.
	OnLockError func(error)
}

// Arena allocates cells of locked memory. It is safe for concurrent use.
// Its pages live as long as the process: an Arena has no Close, because a
// cell still referenced after an unmap would fault.
type Arena struct {
	onLockError func(error)
	lock        func([]byte) error // lockMem; tests substitute a failing one

	mu      sync.Mutex
	classes [2]class
	chunks  []*chunk
	lockErr error
	locked  int // bytes mapped and locked
}

type class struct {
	size int
	free [][]byte // free cells, each of len and cap size
}

// chunk is one mapping carved into cells of one class.
type chunk struct {
	mem   []byte
	base  uintptr
	class int
	used  []bool // by cell index: guards against a double Free
}

// New returns an Arena. It maps nothing until the first Alloc.
func New(o Options) *Arena {
	a := &Arena{onLockError: o.OnLockError, lock: lockMem}
	a.classes[0].size = CellSmall
	a.classes[1].size = CellLarge
	return a
}

// Alloc returns a zeroed slice of n bytes (1 <= n <= CellLarge) in a cell
// of the arena. The caller owns it until it hands it to Free; it must not
// append to it (its capacity is n). Alloc panics if n is out of range, and
// if the system refuses memory for a new chunk.
func (a *Arena) Alloc(n int) []byte {
	if n < 1 || n > CellLarge {
		panic(fmt.Sprintf("secmem: Alloc(%d): want 1 to %d bytes", n, CellLarge))
	}
	if a == nil {
		return make([]byte, n)
	}
	ci := 0
	if n > CellSmall {
		ci = 1
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c := &a.classes[ci]
	if len(c.free) == 0 {
		a.grow(ci)
	}
	cell := c.free[len(c.free)-1]
	c.free[len(c.free)-1] = nil
	c.free = c.free[:len(c.free)-1]
	ch, i := a.find(cell)
	ch.used[i] = true
	return cell[:n:n]
}

// Clone returns a copy of b in a cell of the arena (nil if b is empty).
// The caller frees it.
func (a *Arena) Clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	c := a.Alloc(len(b))
	copy(c, b)
	return c
}

// Free zeroes b and, if b is a cell of this arena, returns the cell for
// reuse. A slice that is not from this arena (or a nil arena) is only
// zeroed, so Free is always at least clear(b). b must be a whole slice as
// Alloc or Clone returned it; freeing a cell twice panics, since handing
// one cell to two owners would share a key. Free(nil) does nothing.
func (a *Arena) Free(b []byte) {
	if cap(b) == 0 {
		return
	}
	clear(b)
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ch, i := a.find(b)
	if ch == nil {
		return
	}
	size := a.classes[ch.class].size
	cell := ch.mem[i*size : (i+1)*size : (i+1)*size]
	if unsafe.SliceData(cell) != unsafe.SliceData(b) {
		panic("secmem: Free of a slice that does not start its cell")
	}
	if !ch.used[i] {
		panic("secmem: cell freed twice")
	}
	ch.used[i] = false
	clear(cell)
	a.classes[ch.class].free = append(a.classes[ch.class].free, cell)
}

// LockError returns nil if every chunk mapped so far is locked in memory,
// else the first locking failure (wrapping ErrNotLocked).
func (a *Arena) LockError() error {
	if a == nil {
		return fmt.Errorf("secmem: heap memory: %w", ErrNotLocked)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lockErr
}

// LockedBytes returns how many bytes of the arena are mapped and locked.
func (a *Arena) LockedBytes() int {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.locked
}

// InUse returns how many cells are allocated and not yet freed.
func (a *Arena) InUse() int {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, ch := range a.chunks {
		for _, u := range ch.used {
			if u {
				n++
			}
		}
	}
	return n
}

// find returns the chunk holding b's first byte and the cell index, or nil.
// Call with mu held. Chunks are sorted by address (grow), so a mount with
// thousands of open files finds a cell in a few steps.
func (a *Arena) find(b []byte) (*chunk, int) {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	k := sort.Search(len(a.chunks), func(i int) bool { return a.chunks[i].base+uintptr(len(a.chunks[i].mem)) > p })
	if k < len(a.chunks) {
		if ch := a.chunks[k]; p >= ch.base {
			return ch, int(p-ch.base) / a.classes[ch.class].size
		}
	}
	return nil, 0
}

// grow maps a chunk for class ci and puts its cells on the free list.
// Call with mu held.
func (a *Arena) grow(ci int) {
	mem, err := mapChunk(chunkSize)
	if err != nil {
		panic(fmt.Sprintf("secmem: mapping %d bytes for key memory: %v", chunkSize, err))
	}
	if lerr := a.lock(mem); lerr != nil {
		if a.lockErr == nil {
			a.lockErr = fmt.Errorf("%w: %v (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= in a systemd unit, or mount as root)", ErrNotLocked, lerr)
			if a.onLockError != nil {
				a.onLockError(a.lockErr)
			}
		}
	} else {
		a.locked += len(mem)
	}
	size := a.classes[ci].size
	ch := &chunk{mem: mem, base: uintptr(unsafe.Pointer(unsafe.SliceData(mem))), class: ci, used: make([]bool, len(mem)/size)}
	k := sort.Search(len(a.chunks), func(i int) bool { return a.chunks[i].base > ch.base })
	a.chunks = slices.Insert(a.chunks, k, ch)
	c := &a.classes[ci]
	for i := len(ch.used) - 1; i >= 0; i-- {
		c.free = append(c.free, mem[i*size:(i+1)*size:(i+1)*size])
	}
}

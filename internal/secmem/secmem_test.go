package secmem_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/kmsfs/kmsfs/internal/secmem"
)

// chunk is the arena's mapping size: tests that must reach a second
// mapping allocate two chunks' worth of cells.
const chunk = 16 << 10

func fill(b []byte) {
	for i := range b {
		b[i] = byte(i) | 0x80
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestFreeZeroes is the attack of reading a dropped key back out of
// memory: after Free the cell holds zeros, whether or not it is reused.
func TestFreeZeroes(t *testing.T) {
	for _, n := range []int{1, 16, secmem.CellSmall, secmem.CellSmall + 1, 512, secmem.CellLarge} {
		for _, arena := range []string{"locked", "nil"} {
			t.Run(fmt.Sprintf("n=%d,arena=%s", n, arena), func(t *testing.T) {
				var a *secmem.Arena
				if arena == "locked" {
					a = secmem.New(secmem.Options{})
				}
				b := a.Alloc(n)
				if len(b) != n || cap(b) != n || !isZero(b) {
					t.Fatalf("Alloc(%d): len %d cap %d zero %v", n, len(b), cap(b), isZero(b))
				}
				fill(b)
				// The cell's memory stays mapped after Free: look at it
				// through a second slice header, as an attacker reading the
				// process's memory would.
				view := unsafe.Slice(unsafe.SliceData(b), n)
				a.Free(b)
				if !isZero(view) {
					t.Fatalf("cell after Free holds %x", view)
				}
			})
		}
	}
}

// TestFreeForeign: a slice from elsewhere is zeroed but never enters the
// free list (a later Alloc must not hand out heap memory that another
// owner still holds).
func TestFreeForeign(t *testing.T) {
	a := secmem.New(secmem.Options{})
	own := a.Alloc(secmem.CellSmall)
	heap := make([]byte, secmem.CellSmall, 2*secmem.CellSmall)
	fill(heap[:cap(heap)])
	a.Free(heap)
	if !isZero(heap) {
		t.Fatalf("foreign slice not zeroed: %x", heap)
	}
	if tail := heap[len(heap):cap(heap)]; isZero(tail) {
		t.Fatal("Free cleared past the foreign slice's length")
	}
	for range 2 * chunk / secmem.CellSmall {
		if c := a.Alloc(secmem.CellSmall); unsafe.SliceData(c) == unsafe.SliceData(heap) {
			t.Fatal("a foreign slice was handed out as a cell")
		}
	}
	a.Free(own)
}

func TestMisuse(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(a *secmem.Arena)
	}{
		{"alloc=0", func(a *secmem.Arena) { a.Alloc(0) }},
		{"alloc=large+1", func(a *secmem.Arena) { a.Alloc(secmem.CellLarge + 1) }},
		{"double-free", func(a *secmem.Arena) { b := a.Alloc(8); a.Free(b); a.Free(b) }},
		{"free-inner", func(a *secmem.Arena) { b := a.Alloc(32); a.Free(b[1:]) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			c.f(secmem.New(secmem.Options{}))
		})
	}
}

// TestReuse: a freed cell is handed out again, zeroed, so the arena reaches
// a steady state instead of mapping (and locking) more pages.
func TestReuse(t *testing.T) {
	a := secmem.New(secmem.Options{})
	b := a.Alloc(secmem.CellSmall)
	fill(b)
	p := unsafe.SliceData(b)
	a.Free(b)
	c := a.Alloc(secmem.CellSmall)
	if unsafe.SliceData(c) != p || !isZero(c) {
		t.Fatalf("reused %v, zero %v", unsafe.SliceData(c) == p, isZero(c))
	}
	if n := a.InUse(); n != 1 {
		t.Fatalf("InUse = %d, want 1", n)
	}
	before := a.LockedBytes()
	for range 1000 {
		a.Free(a.Alloc(secmem.CellLarge))
	}
	if a.LockedBytes() > before+chunk {
		t.Fatalf("1000 alloc/free pairs grew the arena from %d to %d bytes", before, a.LockedBytes())
	}
}

// smapsFor returns the /proc/self/smaps fields of the mapping holding p.
func smapsFor(t *testing.T, p uintptr) map[string]string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var fields map[string]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		k, v, _ := strings.Cut(line, ":")
		// A mapping's header line starts with its address range "lo-hi".
		if lo, hi, ok := strings.Cut(strings.Fields(line)[0], "-"); ok {
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				if fields != nil {
					return fields
				}
				if uint64(p) >= l && uint64(p) < h {
					fields = map[string]string{}
				}
				continue
			}
		}
		if fields != nil {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if fields == nil {
		t.Fatalf("no mapping holds %#x", p)
	}
	return fields
}

// TestLocked is the attack of reading keys from swap or a core dump: the
// cells sit in a mapping that is locked (smaps "Locked:", VmFlags "lo") and
// excluded from dumps (VmFlags "dd").
func TestLocked(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("locking is implemented on linux only")
	}
	for _, n := range []int{secmem.CellSmall, secmem.CellLarge} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			a := secmem.New(secmem.Options{})
			b := a.Alloc(n)
			defer a.Free(b)
			if err := a.LockError(); err != nil {
				t.Fatalf("lock failed (RLIMIT_MEMLOCK?): %v", err)
			}
			if a.LockedBytes() == 0 {
				t.Fatal("LockedBytes is 0 after an Alloc")
			}
			m := smapsFor(t, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
			if m["Locked"] == "0 kB" || m["Locked"] == "" {
				t.Errorf("mapping Locked: %q, want > 0", m["Locked"])
			}
			flags := " " + m["VmFlags"] + " "
			for _, f := range []string{"lo", "dd"} {
				if !strings.Contains(flags, " "+f+" ") {
					t.Errorf("VmFlags %q lack %q", m["VmFlags"], f)
				}
			}
		})
	}
}

// TestLockRefused plays a system that refuses mlock (RLIMIT_MEMLOCK
// exhausted): cells still work and are zeroed, and the failure is reported
// once, wrapping ErrNotLocked.
func TestLockRefused(t *testing.T) {
	var reports []error
	a := secmem.New(secmem.Options{OnLockError: func(err error) { reports = append(reports, err) }})
	secmem.SetLockFunc(a, func([]byte) error { return errors.New("cannot allocate memory") })
	var cells [][]byte
	for range 2 * chunk / secmem.CellLarge {
		b := a.Alloc(secmem.CellLarge)
		fill(b)
		cells = append(cells, b)
	}
	if err := a.LockError(); !errors.Is(err, secmem.ErrNotLocked) || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") {
		t.Fatalf("LockError = %v, want ErrNotLocked naming RLIMIT_MEMLOCK", err)
	}
	if len(reports) != 1 {
		t.Fatalf("OnLockError called %d times over two chunks, want 1", len(reports))
	}
	if a.LockedBytes() != 0 {
		t.Fatalf("LockedBytes = %d, want 0", a.LockedBytes())
	}
	for _, b := range cells {
		view := unsafe.Slice(unsafe.SliceData(b), len(b))
		a.Free(b)
		if !isZero(view) {
			t.Fatal("unlocked cell not zeroed on Free")
		}
	}
}

// TestConcurrent runs Alloc/Free from many goroutines (run with -race):
// no cell is ever handed to two owners at once.
func TestConcurrent(t *testing.T) {
	a := secmem.New(secmem.Options{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				n := secmem.CellSmall
				if (g+i)%3 == 0 {
					n = secmem.CellLarge
				}
				b := a.Alloc(n)
				for j := range b {
					b[j] = byte(g)
				}
				for j := range b {
					if b[j] != byte(g) {
						t.Errorf("goroutine %d: cell shared with another owner", g)
						return
					}
				}
				a.Free(b)
			}
		}()
	}
	wg.Wait()
}

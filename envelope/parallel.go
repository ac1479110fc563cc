package envelope

import (
	"io"
	"math/bits"
	"sync"
)

// run calls work on the block range [0, n) of a request of size bytes:
// on the calling goroutine, or split into contiguous ranges across up to
// the Volume's worker cap when size reaches its parallel threshold. work
// returns the index of its first failed block (or hi) and the error; run
// returns the lowest failed index (or n) and that range's error.
func (v *Volume) run(n, size int, work func(lo, hi int, aad *[aadSize]byte) (int, error)) (int, error) {
	workers := 1
	if v.parallelMin > 0 && size >= v.parallelMin {
		workers = min(v.workers, n)
	}
	if workers <= 1 {
		aad := v.aads.Get().(*[aadSize]byte)
		defer v.aads.Put(aad)
		return work(0, n, aad)
	}
	type result struct {
		bad int
		err error
	}
	results := make([]result, workers)
	var wg sync.WaitGroup
	chunk := func(w int) {
		lo, hi := w*n/workers, (w+1)*n/workers
		aad := v.aads.Get().(*[aadSize]byte)
		bad, err := work(lo, hi, aad)
		v.aads.Put(aad)
		results[w] = result{bad, err}
	}
	wg.Add(workers - 1)
	for w := 1; w < workers; w++ {
		go func() {
			defer wg.Done()
			chunk(w)
		}()
	}
	chunk(0)
	wg.Wait()
	for _, r := range results {
		if r.err != nil {
			return r.bad, r.err
		}
	}
	return n, nil
}

// bufPool hands out byte buffers in power-of-two size classes, so that
// requests of any size reuse memory and allocate nothing in steady state.
type bufPool struct {
	classes [maxPoolClass + 1]sync.Pool
}

const maxPoolClass = 26 // 64 MiB; larger buffers are not pooled

// get returns a buffer of length n. Give it back with put.
func (p *bufPool) get(n int) *[]byte {
	c := bits.Len(uint(n - 1))
	if n <= 1 {
		c = 0
	}
	if c > maxPoolClass {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<c)
	return &b
}

// put returns a buffer from get to the pool.
func (p *bufPool) put(b *[]byte) {
	c := bits.Len(uint(cap(*b) - 1))
	if cap(*b) != 1<<c || c > maxPoolClass {
		return
	}
	p.classes[c].Put(b)
}

func readFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }

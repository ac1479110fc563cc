package envelope

import (
	"io"
	"math/bits"
	"sync"
)

// run processes the n blocks of job j, a request of size bytes: on the
// calling goroutine, or split into contiguous ranges across up to the
// Volume's worker cap when size reaches its parallel threshold. It returns
// the lowest failed block index (or n) and that block's error.
func (v *Volume) run(j job, n, size int) (int, error) {
	workers := 1
	if v.parallelMin > 0 && size >= v.parallelMin {
		workers = min(v.workers, n)
	}
	aad := v.aads.Get().(*[aadSize]byte)
	defer v.aads.Put(aad)
	if workers <= 1 {
		return j.do(0, n, aad)
	}
	jp := new(job) // only the parallel path shares the job with goroutines
	*jp = j
	return v.runParallel(jp, n, workers, aad)
}

// runParallel is run's parallel path; aad is the calling goroutine's.
func (v *Volume) runParallel(j *job, n, workers int, aad *[aadSize]byte) (int, error) {
	type result struct {
		bad int
		err error
	}
	results := make([]result, workers)
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Go(func() {
			a := v.aads.Get().(*[aadSize]byte)
			bad, err := j.do(w*n/workers, (w+1)*n/workers, a)
			v.aads.Put(a)
			results[w] = result{bad, err}
		})
	}
	bad, err := j.do(0, n/workers, aad)
	results[0] = result{bad, err}
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

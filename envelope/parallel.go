package envelope

import (
	"io"
	"math/bits"
	"sync"

	"github.com/kmsfs/kmsfs/internal/parallel"
)

// run processes the n blocks of job j, a request of size bytes: on the
// calling goroutine, or split into contiguous chunks across up to the
// Volume's worker cap (internal/parallel) when size reaches its parallel
// threshold. A seal job's nonces are put in place first. It returns the
// lowest failed block index (or n) and that block's error.
func (v *Volume) run(j job, n, size int) (int, error) {
	if j.seal {
		if err := j.putNonces(n); err != nil {
			return 0, err
		}
	}
	workers := 1
	if v.parallelMin > 0 && size >= v.parallelMin {
		workers = min(v.workers, n)
	}
	aad := v.helpers.Scratch()
	defer v.helpers.PutScratch(aad)
	if workers <= 1 {
		return j.do(0, n, aad)
	}
	return v.helpers.Run(j.sched(n), workers, aad)
}

// sched returns j, of n blocks, as a job of the scheduler. Only the
// parallel path shares j with other goroutines, so only it moves j to the
// heap.
func (j job) sched(n int) parallel.Job[[aadSize]byte] {
	jp := &j
	return parallel.Job[[aadSize]byte]{N: n, Do: jp.do}
}

// pipeChunk is the plaintext a pipeline seals per chunk: large enough that
// a chunk's write costs far more than a system call, small enough that the
// first write starts early.
const pipeChunk = 128 << 10

// sealPipe seals a request's blocks on helpers while the caller writes out
// the ones already sealed (drain), so that on two cores sealing hides
// behind the write instead of preceding it.
type sealPipe struct {
	v    *Volume
	p    *parallel.Pipe[[aadSize]byte]
	aad  *[aadSize]byte
	n    int   // blocks
	base int64 // where the first block starts in the bytes its File stores (File.apply)
}

// pipeline puts job j's nonces in place and starts sealing its n blocks as
// a pipeline, or returns nil when the request is too small or the Volume
// has one worker: then the caller seals it in one go. An error (reading
// the nonces) comes with no pipe.
func (v *Volume) pipeline(j job, n int) (*sealPipe, error) {
	chunk := max(1, pipeChunk/v.layout.blockSize)
	if v.workers < 2 || v.parallelMin <= 0 || n < 2*chunk || len(j.src) < v.parallelMin {
		return nil, nil
	}
	if err := j.putNonces(n); err != nil {
		return nil, err
	}
	p := v.helpers.Pipeline(j.sched(n), chunk, v.workers)
	return &sealPipe{v: v, p: p, aad: v.helpers.Scratch(), n: n}, nil
}

// drain calls write for runs of sealed blocks [lo, hi), in order, as they
// become ready, sealing chunks itself whenever the next one to write has
// not been taken by a helper. It stops at write's first error. Call finish
// afterwards in any case.
func (sp *sealPipe) drain(write func(lo, hi int) error) error { return sp.p.Drain(sp.aad, write) }

// finish seals whatever is left and waits until no helper is still
// working on the request, so that its buffers can be reused.
func (sp *sealPipe) finish() {
	if sp.aad == nil {
		return
	}
	sp.p.Finish(sp.aad)
	sp.v.helpers.PutScratch(sp.aad)
	sp.aad = nil
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

package envelope

import (
	"io"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
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
		if j.seal {
			if err := j.putNonces(0, n); err != nil {
				return 0, err
			}
		}
		return j.do(0, n, aad)
	}
	return v.runParallel(j, n, workers, aad)
}

// runParallel is run's parallel path; aad is the calling goroutine's.
//
// The request is cut into contiguous chunks of blocks. The caller
// publishes it to the Volume's helper goroutines and then works through
// the chunks itself; helpers that are awake take chunks too. The caller
// waits only for chunks a helper has already taken, never for a helper to
// wake up, so a request is never slower than the serial path. (Waking an
// idle core can take longer than a whole 1 MiB request on a VM.)
//
// Helpers take chunks from the front, the caller from the back, and they
// meet once. So from one request to the next each core works through
// about the same part of reused buffers, still in its own cache, instead
// of alternating chunks with the other core: Seal of 1 MiB in 4 KiB blocks,
// median of 10 runs, 151.7 µs with the caller also taking from the front,
// 143.2 µs this way (docs/PERFORMANCE.md). A seal job's nonces are all in place
// before the caller starts, so it never waits for them at the back.
func (v *Volume) runParallel(j job, n, workers int, aad *[aadSize]byte) (int, error) {
	t, err := v.start(j, n, max(1, n/(16*workers)), workers, false)
	t.finish(aad, true)
	if err != nil {
		return 0, err
	}
	if bad := int(t.bad.Load()); bad < n {
		t.mu.Lock()
		defer t.mu.Unlock()
		return bad, t.err
	}
	return n, nil
}

// task is one parallel request.
type task struct {
	j      *job
	n      int           // blocks
	chunk  int           // blocks per chunk
	chunks uint64        // chunks in all
	taken  atomic.Uint64 // chunks taken from the front (low 32 bits) and from the back (high 32 bits)
	active atomic.Int32  // participants between taking and finishing chunks
	bad    atomic.Int64  // lowest failed block, n if none
	mu     sync.Mutex
	err    error         // the error of block bad
	done   []atomic.Bool // per chunk, for a pipeline; nil otherwise
	ready  atomic.Int64  // blocks [0, ready) may be processed: a seal job's nonces are in place
}

// start publishes job j of n blocks, in chunks of chunk blocks, to
// workers-1 helpers and, for a seal job, puts its nonces in place
// (nonces); with pipelined, the task notes each chunk done. The caller
// finishes the task in any case, also after an error.
func (v *Volume) start(j job, n, chunk, workers int, pipelined bool) (*task, error) {
	jp := new(job) // only the parallel path shares the job with goroutines
	*jp = j
	t := &task{j: jp, n: n, chunk: chunk, chunks: uint64((n + chunk - 1) / chunk)}
	if pipelined {
		t.done = make([]atomic.Bool, t.chunks)
	}
	t.bad.Store(int64(n))
	if !j.seal {
		t.ready.Store(int64(n))
	}
	v.helpers.publish(t, workers-1)
	return t, t.nonces()
}

// nonces puts a seal task's nonces in place in growing batches (a chunk,
// a chunk, two, four…), publishing each, so that helpers start sealing
// after the first batch instead of after all of them: reading the nonces
// of a 1 MiB request of 4 KiB blocks from the system's random source takes
// 9-14 µs of the request's ~120 µs on two cores. On an error the rest is
// published unfilled, so no helper waits for it, and the caller discards
// the request.
func (t *task) nonces() error {
	if !t.j.seal {
		return nil
	}
	for lo, batch := 0, t.chunk; lo < t.n; {
		hi := min(lo+batch, t.n)
		if err := t.j.putNonces(lo, hi); err != nil {
			t.ready.Store(int64(t.n))
			return err
		}
		t.ready.Store(int64(hi))
		if lo > 0 {
			batch *= 2
		}
		lo = hi
	}
	return nil
}

// finish processes the chunks no one has taken, from the back with
// fromBack, and waits until no helper is still working on the task, so
// that its buffers can be reused.
func (t *task) finish(aad *[aadSize]byte, fromBack bool) {
	t.work(aad, fromBack)
	for t.active.Load() > 0 {
		runtime.Gosched() // a helper is finishing its last chunk
	}
}

// work takes and processes chunks, from the back with fromBack, until none
// are left.
func (t *task) work(aad *[aadSize]byte, fromBack bool) {
	t.active.Add(1)
	defer t.active.Add(-1)
	for t.takeOne(aad, fromBack) {
	}
}

// take takes the lowest chunk not yet taken or, with fromBack, the
// highest; false if none was left.
func (t *task) take(fromBack bool) (int, bool) {
	for {
		old := t.taken.Load()
		front, back := old&(1<<32-1), old>>32
		if front+back >= t.chunks {
			return 0, false
		}
		k, nw := front, old+1
		if fromBack {
			k, nw = t.chunks-1-back, old+1<<32
		}
		if t.taken.CompareAndSwap(old, nw) {
			return int(k), true
		}
	}
}

func (t *task) exhausted() bool {
	x := t.taken.Load()
	return x&(1<<32-1)+x>>32 >= t.chunks
}

// takeOne takes and processes one chunk (see take); false if none was
// left.
func (t *task) takeOne(aad *[aadSize]byte, fromBack bool) bool {
	k, ok := t.take(fromBack)
	if !ok {
		return false
	}
	lo := k * t.chunk
	hi := min(lo+t.chunk, t.n)
	for t.ready.Load() < int64(hi) {
		runtime.Gosched() // the caller is still putting nonces in place
	}
	if bad, err := t.j.do(lo, hi, aad); err != nil {
		t.mu.Lock()
		if int64(bad) < t.bad.Load() {
			t.bad.Store(int64(bad))
			t.err = err
		}
		t.mu.Unlock()
	}
	if t.done != nil {
		t.done[k].Store(true)
	}
	return true
}

// pipeChunk is the plaintext a pipeline seals per chunk: large enough that
// a chunk's write costs far more than a system call, small enough that the
// first write starts early.
const pipeChunk = 128 << 10

// sealPipe seals a request's blocks on the Volume's helpers while the
// caller writes out the ones already sealed (drain), so that on two cores
// sealing hides behind the write instead of preceding it.
type sealPipe struct {
	v   *Volume
	t   *task
	aad *[aadSize]byte
}

// pipeline starts sealing job j of n blocks as a pipeline, or returns nil
// when the request is too small or the Volume has one worker: then the
// caller seals it in one go. An error (reading the nonces) comes with no
// pipe, the helpers already done with it.
func (v *Volume) pipeline(j job, n int) (*sealPipe, error) {
	chunk := max(1, pipeChunk/v.layout.blockSize)
	if v.workers < 2 || v.parallelMin <= 0 || n < 2*chunk || len(j.src) < v.parallelMin {
		return nil, nil
	}
	t, err := v.start(j, n, chunk, v.workers, true)
	sp := &sealPipe{v: v, t: t, aad: v.aads.Get().(*[aadSize]byte)}
	if err != nil {
		sp.finish()
		return nil, err
	}
	return sp, nil
}

// drain calls write for runs of sealed blocks [lo, hi), in order, as they
// become ready, sealing chunks itself whenever the next one to write has
// not been taken by a helper. It stops at write's first error. Call finish
// afterwards in any case.
func (p *sealPipe) drain(write func(lo, hi int) error) error {
	t := p.t
	chunks := len(t.done)
	for next := 0; next < chunks; {
		if !t.done[next].Load() {
			if !t.takeOne(p.aad, false) {
				runtime.Gosched() // a helper is sealing it
			}
			continue
		}
		end := next + 1
		for end < chunks && t.done[end].Load() {
			end++
		}
		if err := write(next*t.chunk, min(end*t.chunk, t.n)); err != nil {
			return err
		}
		next = end
	}
	return nil
}

// finish seals whatever is left and waits until no helper is still
// working on the request, so that its buffers can be reused.
func (p *sealPipe) finish() {
	if p.aad == nil {
		return
	}
	p.t.finish(p.aad, false)
	p.v.aads.Put(p.aad)
	p.aad = nil
}

// helpers are a Volume's goroutines that help with parallel requests.
// They start on demand, spin for a short while after each task so that
// back-to-back requests find them awake, park when idle, and exit after a
// longer idle spell, so a Volume needs no closing.
type helpers struct {
	cur     atomic.Pointer[task]
	running atomic.Int32
	wake    chan struct{}
	aads    *sync.Pool
	spin    time.Duration
	idle    time.Duration
}

func (h *helpers) publish(t *task, want int) {
	h.cur.Store(t)
	for {
		r := h.running.Load()
		if int(r) >= want {
			break
		}
		if h.running.CompareAndSwap(r, r+1) {
			go h.loop()
		}
	}
	for range want {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
}

func (h *helpers) loop() {
	defer h.running.Add(-1)
	aad := h.aads.Get().(*[aadSize]byte)
	defer h.aads.Put(aad)
	timer := time.NewTimer(h.idle)
	defer timer.Stop()
	for {
		// Spin: look for work until spin has passed without any.
		deadline := time.Now().Add(h.spin)
		for time.Now().Before(deadline) {
			if t := h.cur.Load(); t != nil && !t.exhausted() {
				t.work(aad, false)
				deadline = time.Now().Add(h.spin)
				continue
			}
			runtime.Gosched()
		}
		timer.Reset(h.idle)
		select {
		case <-h.wake:
		case <-timer.C:
			return
		}
	}
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

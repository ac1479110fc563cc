// Package parallel runs one request of n items (blocks to seal or open,
// say) on the calling goroutine together with a pool of helper goroutines,
// cut into contiguous chunks. It knows nothing of what an item is: a Job is
// plain functions over item ranges, and S is the scratch each participant
// brings (a buffer it must not share).
//
// The caller never waits for a helper to wake up, only for chunks a helper
// has already taken, so a request run here is never slower than running it
// alone: waking an idle core can take longer than a whole request.
package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Job is one request of N items.
type Job[S any] struct {
	N int
	// Prepare, if set, readies items [lo, hi) before any of them is
	// processed (a seal's nonces). It is called on the calling goroutine,
	// in order, over batches that cover [0, N) once.
	Prepare func(lo, hi int) error
	// Do processes items [lo, hi) with the participant's scratch and
	// returns the first item that failed (or hi) and its error. It is
	// called from several goroutines at once, on disjoint ranges.
	Do func(lo, hi int, s *S) (int, error)
}

// Pool is a set of helper goroutines. They start on demand, spin for a
// short while after each request so that back-to-back requests find them
// awake, park when idle, and exit after a longer idle spell, so a Pool
// needs no closing. It is safe for concurrent use; a helper works on the
// latest request published.
type Pool[S any] struct {
	cur     atomic.Pointer[task[S]]
	running atomic.Int32
	wake    chan struct{}
	scratch sync.Pool
	spin    time.Duration
	idle    time.Duration
}

// New returns a Pool for requests of up to workers participants (the
// caller and workers-1 helpers). Helpers spin for spin after their last
// chunk before parking, and exit after idle parked.
func New[S any](workers int, spin, idle time.Duration) *Pool[S] {
	p := &Pool[S]{wake: make(chan struct{}, max(1, workers)), spin: spin, idle: idle}
	p.scratch.New = func() any { return new(S) }
	return p
}

// Scratch returns a scratch value from the pool's free list, for a caller
// that processes items itself; give it back with PutScratch.
func (p *Pool[S]) Scratch() *S { return p.scratch.Get().(*S) }

// PutScratch returns s to the free list.
func (p *Pool[S]) PutScratch(s *S) { p.scratch.Put(s) }

// Run processes job j with the calling goroutine, whose scratch is s, and
// up to workers-1 helpers. The items are cut into contiguous chunks;
// helpers take them from the front, the caller from the back, and they
// meet once. So from one request to the next each core works through about
// the same part of reused buffers, still in its own cache, instead of
// alternating chunks with the other core. Prepare has readied every item
// before the caller starts, so the caller never waits for it at the back.
//
// Run returns the lowest failed item (or j.N) and its error; if Prepare
// fails, 0 and that error. No helper touches j once Run returns.
func (p *Pool[S]) Run(j Job[S], workers int, s *S) (int, error) {
	t, err := p.start(j, max(1, j.N/(16*workers)), workers, false)
	t.finish(s, true)
	if err != nil {
		return 0, err
	}
	if bad := int(t.bad.Load()); bad < j.N {
		t.mu.Lock()
		defer t.mu.Unlock()
		return bad, t.err
	}
	return j.N, nil
}

// task is one request in progress.
type task[S any] struct {
	j      Job[S]
	chunk  int           // items per chunk
	chunks uint64        // chunks in all
	taken  atomic.Uint64 // chunks taken from the front (low 32 bits) and from the back (high 32 bits)
	active atomic.Int32  // participants between taking and finishing chunks
	bad    atomic.Int64  // lowest failed item, N if none
	mu     sync.Mutex
	err    error         // the error of item bad
	done   []atomic.Bool // per chunk, for a pipeline; nil otherwise
	ready  atomic.Int64  // items [0, ready) may be processed: Prepare has run on them
}

// start publishes job j, in chunks of chunk items, to workers-1 helpers
// and runs Prepare (prepare); with pipelined, the task notes each chunk
// done. The caller finishes the task in any case, also after an error.
func (p *Pool[S]) start(j Job[S], chunk, workers int, pipelined bool) (*task[S], error) {
	t := &task[S]{j: j, chunk: chunk, chunks: uint64((j.N + chunk - 1) / chunk)}
	if pipelined {
		t.done = make([]atomic.Bool, t.chunks)
	}
	t.bad.Store(int64(j.N))
	if j.Prepare == nil {
		t.ready.Store(int64(j.N))
	}
	p.publish(t, workers-1)
	return t, t.prepare()
}

// prepare runs Prepare in growing batches (a chunk, a chunk, two, four…),
// publishing each, so that helpers start after the first batch instead of
// after all of them. On an error the rest is published unprepared, so no
// helper waits for it, and the caller discards the request.
func (t *task[S]) prepare() error {
	if t.j.Prepare == nil {
		return nil
	}
	n := t.j.N
	for lo, batch := 0, t.chunk; lo < n; {
		hi := min(lo+batch, n)
		if err := t.j.Prepare(lo, hi); err != nil {
			t.ready.Store(int64(n))
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
func (t *task[S]) finish(s *S, fromBack bool) {
	t.work(s, fromBack)
	for t.active.Load() > 0 {
		runtime.Gosched() // a helper is finishing its last chunk
	}
}

// work takes and processes chunks, from the back with fromBack, until none
// are left.
func (t *task[S]) work(s *S, fromBack bool) {
	t.active.Add(1)
	defer t.active.Add(-1)
	for t.takeOne(s, fromBack) {
	}
}

// take takes the lowest chunk not yet taken or, with fromBack, the
// highest; false if none was left.
func (t *task[S]) take(fromBack bool) (int, bool) {
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

func (t *task[S]) exhausted() bool {
	x := t.taken.Load()
	return x&(1<<32-1)+x>>32 >= t.chunks
}

// takeOne takes and processes one chunk (see take); false if none was
// left.
func (t *task[S]) takeOne(s *S, fromBack bool) bool {
	k, ok := t.take(fromBack)
	if !ok {
		return false
	}
	lo := k * t.chunk
	hi := min(lo+t.chunk, t.j.N)
	for t.ready.Load() < int64(hi) {
		runtime.Gosched() // the caller is still running Prepare
	}
	if bad, err := t.j.Do(lo, hi, s); err != nil {
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

// Pipe is a job whose chunks helpers process while the caller consumes
// the finished ones in order (Drain): on two cores, sealing hides behind
// the writing of what is sealed instead of preceding it.
type Pipe[S any] struct {
	t *task[S]
}

// Pipeline starts job j in chunks of chunk items on up to workers-1
// helpers and returns; the caller, whose scratch is s, drains the pipe and
// finishes it. If Prepare fails, the helpers are already done with the job
// and Pipeline returns only the error.
func (p *Pool[S]) Pipeline(j Job[S], chunk, workers int, s *S) (*Pipe[S], error) {
	t, err := p.start(j, chunk, workers, true)
	if err != nil {
		t.finish(s, false)
		return nil, err
	}
	return &Pipe[S]{t: t}, nil
}

// Drain calls consume for runs of processed items [lo, hi), in order, as
// they become ready, processing chunks itself (with scratch s) whenever
// the next one to consume has not been taken by a helper. It stops at
// consume's first error. Call Finish afterwards in any case.
func (pp *Pipe[S]) Drain(s *S, consume func(lo, hi int) error) error {
	t := pp.t
	chunks := len(t.done)
	for next := 0; next < chunks; {
		if !t.done[next].Load() {
			if !t.takeOne(s, false) {
				runtime.Gosched() // a helper is processing it
			}
			continue
		}
		end := next + 1
		for end < chunks && t.done[end].Load() {
			end++
		}
		if err := consume(next*t.chunk, min(end*t.chunk, t.j.N)); err != nil {
			return err
		}
		next = end
	}
	return nil
}

// Finish processes whatever is left, with scratch s, and waits until no
// helper is still working on the job, so that its buffers can be reused.
// Errors of Do are not reported: a pipeline's Do does not fail.
func (pp *Pipe[S]) Finish(s *S) { pp.t.finish(s, false) }

func (p *Pool[S]) publish(t *task[S], want int) {
	p.cur.Store(t)
	for {
		r := p.running.Load()
		if int(r) >= want {
			break
		}
		if p.running.CompareAndSwap(r, r+1) {
			go p.loop()
		}
	}
	for range want {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (p *Pool[S]) loop() {
	defer p.running.Add(-1)
	s := p.Scratch()
	defer p.PutScratch(s)
	timer := time.NewTimer(p.idle)
	defer timer.Stop()
	for {
		// Spin: look for work until spin has passed without any.
		deadline := time.Now().Add(p.spin)
		for time.Now().Before(deadline) {
			if t := p.cur.Load(); t != nil && !t.exhausted() {
				t.work(s, false)
				deadline = time.Now().Add(p.spin)
				continue
			}
			runtime.Gosched()
		}
		timer.Reset(p.idle)
		select {
		case <-p.wake:
		case <-timer.C:
			return
		}
	}
}

// Package parallel runs one request of n items (blocks to seal or open,
// say) on the calling goroutine together with helper goroutines started
// for it, cut into contiguous chunks that everyone takes from the front. It
// knows nothing of what an item is: a Job is a plain function over item
// ranges, and S is the scratch each participant brings (a buffer it must
// not share).
//
// The caller never waits for a helper to start, only for chunks a helper
// has already taken: a helper that wakes late finds nothing left and
// leaves. So a request run here is never much slower than running it
// alone, although waking an idle core can take longer than a whole
// request.
package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Job is one request of N items.
type Job[S any] struct {
	N int
	// Do processes items [lo, hi) with the participant's scratch and
	// returns the first item that failed (or hi) and its error. It is
	// called from several goroutines at once, on disjoint ranges.
	Do func(lo, hi int, s *S) (int, error)
}

// Pool hands out the participants' scratch values. Helper goroutines live
// only as long as the request they were started for, so a Pool holds no
// goroutine and needs no closing. It is safe for concurrent use.
type Pool[S any] struct {
	scratch sync.Pool
}

// New returns a Pool.
func New[S any]() *Pool[S] {
	p := &Pool[S]{}
	p.scratch.New = func() any { return new(S) }
	return p
}

// Scratch returns a scratch value from the pool's free list, for a caller
// that processes items itself; give it back with PutScratch.
func (p *Pool[S]) Scratch() *S { return p.scratch.Get().(*S) }

// PutScratch returns s to the free list.
func (p *Pool[S]) PutScratch(s *S) { p.scratch.Put(s) }

// Run processes job j with the calling goroutine, whose scratch is s, and
// up to workers-1 helpers, in chunks of a sixteenth of each participant's
// share, so that a helper that starts late still finds work. It returns
// the lowest failed item (or j.N) and its error. No helper touches j once
// Run returns.
func (p *Pool[S]) Run(j Job[S], workers int, s *S) (int, error) {
	t := p.start(j, max(1, j.N/(16*workers)), workers, false)
	t.finish(s)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bad, t.err
}

// task is one request in progress.
type task[S any] struct {
	j        Job[S]
	chunk    int          // items per chunk
	chunks   int          // chunks in all
	taken    atomic.Int64 // chunks taken, from the front
	finished atomic.Int64 // chunks processed
	done     []atomic.Bool
	mu       sync.Mutex
	bad      int   // lowest failed item, N if none
	err      error // the error of item bad
}

// start publishes job j, in chunks of chunk items, to workers-1 helpers it
// starts; with pipelined, the task notes each chunk done. The caller
// finishes the task.
func (p *Pool[S]) start(j Job[S], chunk, workers int, pipelined bool) *task[S] {
	t := &task[S]{j: j, chunk: chunk, chunks: (j.N + chunk - 1) / chunk, bad: j.N}
	if pipelined {
		t.done = make([]atomic.Bool, t.chunks)
	}
	for range min(workers, t.chunks) - 1 {
		go p.help(t)
	}
	return t
}

// help is a helper's life: take chunks until none are left.
func (p *Pool[S]) help(t *task[S]) {
	s := p.Scratch()
	for t.takeOne(s) {
	}
	p.PutScratch(s)
}

// finish processes the chunks no one has taken and waits until every
// chunk is processed, so that the job's buffers can be reused.
func (t *task[S]) finish(s *S) {
	for t.takeOne(s) {
	}
	for t.finished.Load() < int64(t.chunks) {
		runtime.Gosched() // a helper is finishing its last chunk
	}
}

// takeOne takes the lowest chunk not yet taken and processes it; false if
// none was left.
func (t *task[S]) takeOne(s *S) bool {
	k := int(t.taken.Add(1) - 1)
	if k >= t.chunks {
		return false
	}
	lo := k * t.chunk
	hi := min(lo+t.chunk, t.j.N)
	if bad, err := t.j.Do(lo, hi, s); err != nil {
		t.mu.Lock()
		if bad < t.bad {
			t.bad, t.err = bad, err
		}
		t.mu.Unlock()
	}
	if t.done != nil {
		t.done[k].Store(true)
	}
	t.finished.Add(1)
	return true
}

// Pipe is a job whose chunks helpers process while the caller consumes
// the finished ones in order (Drain): on two cores, sealing hides behind
// the writing of what is sealed instead of preceding it.
type Pipe[S any] struct {
	t *task[S]
}

// Pipeline starts job j in chunks of chunk items on up to workers-1
// helpers and returns; the caller drains the pipe and finishes it.
func (p *Pool[S]) Pipeline(j Job[S], chunk, workers int) *Pipe[S] {
	return &Pipe[S]{t: p.start(j, chunk, workers, true)}
}

// Drain calls consume for runs of processed items [lo, hi), in order, as
// they become ready, processing chunks itself (with scratch s) whenever
// the next one to consume has not been taken by a helper. It stops at
// consume's first error. Call Finish afterwards in any case.
func (pp *Pipe[S]) Drain(s *S, consume func(lo, hi int) error) error {
	t := pp.t
	for next := 0; next < t.chunks; {
		if !t.done[next].Load() {
			if !t.takeOne(s) {
				runtime.Gosched() // a helper is processing it
			}
			continue
		}
		end := next + 1
		for end < t.chunks && t.done[end].Load() {
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
func (pp *Pipe[S]) Finish(s *S) { pp.t.finish(s) }

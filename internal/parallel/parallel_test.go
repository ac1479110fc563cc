package parallel_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/kmsfs/kmsfs/internal/parallel"
)

// items records what a job did to each item.
type items struct {
	done []atomic.Int32
	fail map[int]bool
}

func newItems(n int, fail ...int) *items {
	it := &items{done: make([]atomic.Int32, n), fail: map[int]bool{}}
	for _, k := range fail {
		it.fail[k] = true
	}
	return it
}

func (it *items) job() parallel.Job[[8]byte] {
	return parallel.Job[[8]byte]{N: len(it.done), Do: func(lo, hi int, s *[8]byte) (int, error) {
		s[0]++ // the scratch is the participant's own: -race reports sharing
		for i := lo; i < hi; i++ {
			it.done[i].Add(1)
			if it.fail[i] {
				return i, fmt.Errorf("item %d failed", i)
			}
		}
		return hi, nil
	}}
}

// check fails t unless every item up to upTo was processed exactly once.
func (it *items) check(t *testing.T, upTo int) {
	t.Helper()
	for i := range upTo {
		if d := it.done[i].Load(); d != 1 {
			t.Fatalf("item %d processed %d times, want once", i, d)
		}
	}
}

func TestRun(t *testing.T) {
	p := parallel.New[[8]byte]()
	for _, n := range []int{1, 2, 17, 256, 1000} {
		for _, workers := range []int{1, 2, 4} {
			t.Run(fmt.Sprintf("n=%d,workers=%d", n, workers), func(t *testing.T) {
				it := newItems(n)
				s := p.Scratch()
				defer p.PutScratch(s)
				got, err := p.Run(it.job(), workers, s)
				if got != n || err != nil {
					t.Fatalf("Run = %d, %v; want %d, nil", got, err, n)
				}
				it.check(t, n)
			})
		}
	}
}

// TestRunReportsLowestFailure fails several items, in chunks different
// participants take, and wants the lowest reported.
func TestRunReportsLowestFailure(t *testing.T) {
	p := parallel.New[[8]byte]()
	for _, fail := range [][]int{{0}, {5}, {999}, {3, 700}, {900, 10}} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			it := newItems(1000, fail...)
			s := p.Scratch()
			defer p.PutScratch(s)
			got, err := p.Run(it.job(), 2, s)
			want := min(fail[0], fail[len(fail)-1])
			if got != want || err == nil {
				t.Fatalf("Run = %d, %v; want %d and its error", got, err, want)
			}
		})
	}
}

// TestPipelineDrainsInOrder wants Drain to hand over contiguous runs of
// processed items, in order, covering the job once.
func TestPipelineDrainsInOrder(t *testing.T) {
	p := parallel.New[[8]byte]()
	for _, c := range []struct{ n, chunk int }{{64, 32}, {1000, 32}, {1001, 7}} {
		t.Run(fmt.Sprintf("n=%d,chunk=%d", c.n, c.chunk), func(t *testing.T) {
			it := newItems(c.n)
			s := p.Scratch()
			defer p.PutScratch(s)
			pp := p.Pipeline(it.job(), c.chunk, 2)
			next := 0
			err := pp.Drain(s, func(lo, hi int) error {
				if lo != next || hi <= lo {
					return fmt.Errorf("drained [%d, %d), want a run from %d", lo, hi, next)
				}
				for i := lo; i < hi; i++ {
					if it.done[i].Load() != 1 {
						return fmt.Errorf("item %d drained before it was processed", i)
					}
				}
				next = hi
				return nil
			})
			pp.Finish(s)
			if err != nil || next != c.n {
				t.Fatalf("Drain: %v, up to %d; want all %d items", err, next, c.n)
			}
			it.check(t, c.n)
		})
	}
}

// TestPipelineStopsAtConsumeError wants Drain to return consume's first
// error and consume nothing after it, and Finish to process every item
// anyway, so that no helper is left working on the job's buffers.
func TestPipelineStopsAtConsumeError(t *testing.T) {
	p := parallel.New[[8]byte]()
	errStop := errors.New("stop")
	for _, c := range []struct{ n, chunk, stopAt int }{{64, 8, 0}, {1000, 32, 500}, {1001, 7, 1000}} {
		t.Run(fmt.Sprintf("n=%d,chunk=%d,stopAt=%d", c.n, c.chunk, c.stopAt), func(t *testing.T) {
			it := newItems(c.n)
			s := p.Scratch()
			defer p.PutScratch(s)
			pp := p.Pipeline(it.job(), c.chunk, 2)
			calls := 0
			err := pp.Drain(s, func(lo, hi int) error {
				calls++
				if lo <= c.stopAt && c.stopAt < hi {
					return errStop
				}
				if lo > c.stopAt {
					return fmt.Errorf("drained [%d, %d) after the error", lo, hi)
				}
				return nil
			})
			pp.Finish(s)
			if !errors.Is(err, errStop) {
				t.Fatalf("Drain = %v after %d calls, want %v", err, calls, errStop)
			}
			it.check(t, c.n)
		})
	}
}

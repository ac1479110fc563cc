package parallel_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/parallel"
)

// items records what a job did to each item.
type items struct {
	prepared []atomic.Bool
	done     []atomic.Int32
	early    atomic.Int32 // items processed before they were prepared
	fail     map[int]bool
}

func newItems(n int, fail ...int) *items {
	it := &items{prepared: make([]atomic.Bool, n), done: make([]atomic.Int32, n), fail: map[int]bool{}}
	for _, k := range fail {
		it.fail[k] = true
	}
	return it
}

func (it *items) job(withPrepare bool) parallel.Job[[8]byte] {
	j := parallel.Job[[8]byte]{N: len(it.done), Do: func(lo, hi int, s *[8]byte) (int, error) {
		s[0]++ // the scratch is the participant's own: -race reports sharing
		for i := lo; i < hi; i++ {
			if withPrepare && !it.prepared[i].Load() {
				it.early.Add(1)
			}
			it.done[i].Add(1)
			if it.fail[i] {
				return i, fmt.Errorf("item %d failed", i)
			}
		}
		return hi, nil
	}}
	if withPrepare {
		j.Prepare = func(lo, hi int) error {
			for i := lo; i < hi; i++ {
				if it.prepared[i].Swap(true) {
					return fmt.Errorf("item %d prepared twice", i)
				}
			}
			return nil
		}
	}
	return j
}

// check fails t unless every item up to the first failure was processed
// exactly once, and none before it was prepared.
func (it *items) check(t *testing.T, upTo int) {
	t.Helper()
	for i := range upTo {
		if d := it.done[i].Load(); d != 1 {
			t.Fatalf("item %d processed %d times, want once", i, d)
		}
	}
	if e := it.early.Load(); e > 0 {
		t.Fatalf("%d items processed before Prepare readied them", e)
	}
}

func TestRun(t *testing.T) {
	p := parallel.New[[8]byte](4, 50*time.Microsecond, time.Second)
	for _, n := range []int{1, 2, 17, 256, 1000} {
		for _, workers := range []int{2, 4} {
			for _, prep := range []bool{false, true} {
				t.Run(fmt.Sprintf("n=%d,workers=%d,prepare=%v", n, workers, prep), func(t *testing.T) {
					it := newItems(n)
					s := p.Scratch()
					defer p.PutScratch(s)
					got, err := p.Run(it.job(prep), workers, s)
					if got != n || err != nil {
						t.Fatalf("Run = %d, %v; want %d, nil", got, err, n)
					}
					it.check(t, n)
				})
			}
		}
	}
}

// TestRunReportsLowestFailure fails several items, in chunks different
// participants take, and wants the lowest reported.
func TestRunReportsLowestFailure(t *testing.T) {
	p := parallel.New[[8]byte](2, 50*time.Microsecond, time.Second)
	for _, fail := range [][]int{{0}, {5}, {999}, {3, 700}, {900, 10}} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			it := newItems(1000, fail...)
			s := p.Scratch()
			defer p.PutScratch(s)
			got, err := p.Run(it.job(true), 2, s)
			want := min(fail[0], fail[len(fail)-1])
			if got != want || err == nil {
				t.Fatalf("Run = %d, %v; want %d and its error", got, err, want)
			}
		})
	}
}

func TestRunPrepareFails(t *testing.T) {
	p := parallel.New[[8]byte](2, 50*time.Microsecond, time.Second)
	errPrep := errors.New("no nonces")
	it := newItems(512)
	j := it.job(false)
	j.Prepare = func(lo, hi int) error {
		if hi > 100 {
			return errPrep
		}
		return nil
	}
	s := p.Scratch()
	defer p.PutScratch(s)
	if got, err := p.Run(j, 2, s); got != 0 || !errors.Is(err, errPrep) {
		t.Fatalf("Run = %d, %v; want 0, %v", got, err, errPrep)
	}
}

// TestPipelineDrainsInOrder wants Drain to hand over contiguous runs of
// processed items, in order, covering the job once.
func TestPipelineDrainsInOrder(t *testing.T) {
	p := parallel.New[[8]byte](2, 50*time.Microsecond, time.Second)
	for _, c := range []struct{ n, chunk int }{{64, 32}, {1000, 32}, {1001, 7}} {
		t.Run(fmt.Sprintf("n=%d,chunk=%d", c.n, c.chunk), func(t *testing.T) {
			it := newItems(c.n)
			s := p.Scratch()
			defer p.PutScratch(s)
			pp, err := p.Pipeline(it.job(true), c.chunk, 2, s)
			if err != nil {
				t.Fatal(err)
			}
			next := 0
			err = pp.Drain(s, func(lo, hi int) error {
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

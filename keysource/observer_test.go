package keysource_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// recorder is a keysource.Observer that counts what it is told.
type recorder struct {
	mu      sync.Mutex
	calls   map[string]int // "source/op/ok|error"
	hits    int
	misses  int
	evicts  int
	depth   int
	depthOK bool
	onCall  func(err error) // called under mu, if set
}

func newRecorder() *recorder { return &recorder{calls: map[string]int{}} }

func (r *recorder) KeyCall(source, op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	r.calls[source+"/"+op+"/"+outcome]++
	if r.onCall != nil {
		r.onCall(err)
	}
}

func (r *recorder) CacheLookup(hit bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hit {
		r.hits++
	} else {
		r.misses++
	}
}

func (r *recorder) CacheEvict() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evicts++
}

func (r *recorder) PoolDepth(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.depth, r.depthOK = n, true
}

func (r *recorder) snapshot() recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := map[string]int{}
	for k, v := range r.calls {
		c[k] = v
	}
	return recorder{calls: c, hits: r.hits, misses: r.misses, evicts: r.evicts, depth: r.depth, depthOK: r.depthOK}
}

// TestObserverCounts checks that a Manager reports exactly the key-source
// calls it makes, by operation and outcome, the cache's hits, misses and
// evictions, and the pool's depth.
func TestObserverCounts(t *testing.T) {
	for _, generating := range []bool{false, true} {
		t.Run(fmt.Sprintf("generating=%v", generating), func(t *testing.T) {
			ctx := testCtx(t)
			plain := keysourcetest.New(keysourcetest.Options{})
			var primary keysource.KeySource = plain
			newOp := keysource.OpWrap
			if generating {
				primary = keysourcetest.Generating{Source: plain}
				newOp = keysource.OpGenerate
			}
			const poolSize, files = 3, 5
			rec := newRecorder()
			m := newManager(t, keysource.Options{Primary: primary, Policy: keysource.Policy{MaxFiles: 1},
				PoolSize: poolSize, RefillWorkers: 1, CacheEntries: 2, Observer: rec})
			var stanzas [][]keysource.Stanza
			for range files {
				key, st, err := m.NewDataKey(ctx)
				if err != nil {
					t.Fatal(err)
				}
				clear(key)
				stanzas = append(stanzas, st)
			}
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			got := rec.snapshot()
			// Every file took one batch, and the pool refilled behind it.
			if want := files + poolSize; got.calls["fake/"+newOp+"/ok"] != want {
				t.Errorf("%s calls = %v, want %d", newOp, got.calls, want)
			}
			if !got.depthOK || got.depth != poolSize {
				t.Errorf("pool depth = %d (reported %v), want %d", got.depth, got.depthOK, poolSize)
			}
			// The cache holds 2 of the 5 new files' keys: the last two
			// hit, the first misses and unwraps.
			for _, st := range stanzas[files-2:] {
				if _, err := m.UnwrapKey(ctx, st); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := m.UnwrapKey(ctx, stanzas[0]); err != nil {
				t.Fatal(err)
			}
			got = rec.snapshot()
			if got.hits != 2 || got.misses != 1 || got.calls["fake/unwrap/ok"] != 1 {
				t.Errorf("hits %d, misses %d, unwraps %v; want 2, 1, 1", got.hits, got.misses, got.calls)
			}
			// Putting 5 keys, then one unwrapped, into 2 entries evicts 4.
			if got.evicts != files+1-2 {
				t.Errorf("evictions = %d, want %d", got.evicts, files+1-2)
			}
		})
	}
}

// TestObserverErrorOutcome checks that a failing unwrap is reported
// once, with the source's error, and as a cache miss.
func TestObserverErrorOutcome(t *testing.T) {
	for _, kind := range []error{keysource.ErrDenied, keysource.ErrUnavailable, context.DeadlineExceeded} {
		t.Run("err="+kind.Error(), func(t *testing.T) {
			ctx := testCtx(t)
			fail := fmt.Errorf("fake: unwrap: %w", kind)
			src := keysourcetest.New(keysourcetest.Options{Hook: func(ctx context.Context, o keysourcetest.Op) error {
				if o == keysourcetest.OpUnwrap {
					return fail
				}
				return nil
			}})
			var seen error
			rec := newRecorder()
			rec.onCall = func(err error) { seen = err }
			m := newManager(t, keysource.Options{Primary: src, Observer: rec, DeferPool: true})
			st := wrap(t, keysourcetest.New(keysourcetest.Options{}), randomKey(t))
			if _, err := m.UnwrapKey(ctx, []keysource.Stanza{st}); !errors.Is(err, kind) {
				t.Fatalf("UnwrapKey = %v, want %v", err, kind)
			}
			if got := rec.snapshot(); got.calls["fake/unwrap/error"] != 1 || got.misses != 1 {
				t.Errorf("calls %v, misses %d; want one failed unwrap and one miss", got.calls, got.misses)
			}
			if !errors.Is(seen, kind) {
				t.Errorf("observer got error %v, want one wrapping %v", seen, kind)
			}
		})
	}
}

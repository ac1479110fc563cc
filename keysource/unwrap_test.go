package keysource_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

func TestUnwrapCacheHit(t *testing.T) {
	for _, idLen := range []int{8, 600} { // a stanza over 512 bytes hashes another way
		t.Run(fmt.Sprintf("key-id-len=%d", idLen), func(t *testing.T) {
			src := keysourcetest.New(keysourcetest.Options{KeyID: strings.Repeat("k", idLen)})
			m := newManager(t, keysource.Options{Primary: src, DeferPool: true})
			key, other := randomKey(t), randomKey(t)
			st := []keysource.Stanza{wrap(t, src, key)}
			for i := range 3 {
				got, err := m.UnwrapKey(testCtx(t), st)
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if !bytes.Equal(got, key) {
					t.Fatalf("call %d: wrong key", i)
				}
				clear(got) // the copy is ours: clearing it must not touch the cache
			}
			if n := src.Calls(keysourcetest.OpUnwrap); n != 1 {
				t.Fatalf("%d unwrap calls, want 1", n)
			}
			// Another stanza of the same key ID is another cache entry.
			got, err := m.UnwrapKey(testCtx(t), []keysource.Stanza{wrap(t, src, other)})
			if err != nil || !bytes.Equal(got, other) {
				t.Fatalf("second stanza: %v (key equal: %v)", err, bytes.Equal(got, other))
			}
		})
	}
}

// TestSweep checks that the background sweep zeroes an expired cached key
// and an expired data key even when nothing asks for them (the attack: a
// key read from the memory of an idle mount long after its age).
func TestSweep(t *testing.T) {
	clock := keysourcetest.NewClock(time.Unix(1e9, 0))
	src := keysourcetest.NewGenerating(keysourcetest.Options{})
	m := newManager(t, keysource.Options{Primary: src, Now: clock.Now, CacheMaxAge: time.Hour,
		Policy: keysource.Policy{MaxFiles: 100, MaxAge: time.Minute}})
	ctx := testCtx(t)
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	dk, _, err := m.NewDataKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := randomKey(t)
	st := wrap(t, src, key)
	if _, err := m.UnwrapKey(ctx, []keysource.Stanza{st}); err != nil {
		t.Fatal(err)
	}
	// The cells themselves, not copies: they stay readable after they are
	// freed (a nil arena never reuses them).
	poolCell, cacheCell := keysource.PoolKeys(m)[0], keysource.CachedKey(m, st)
	holds := func(cell, k []byte) bool { return bytes.Equal(cell, k) }
	for _, c := range []struct {
		advance       time.Duration
		data, unwrapd bool
	}{
		{0, true, true},
		{time.Minute, false, true},
		{time.Hour, false, false},
	} {
		clock.Advance(c.advance)
		keysource.Sweep(m)
		if holds(poolCell, dk) != c.data || holds(cacheCell, key) != c.unwrapd {
			t.Fatalf("after +%v: data key held %v (want %v), unwrapped key held %v (want %v)",
				c.advance, holds(poolCell, dk), c.data, holds(cacheCell, key), c.unwrapd)
		}
		if !c.data && !isZero(poolCell) || !c.unwrapd && !isZero(cacheCell) {
			t.Fatalf("after +%v: a dropped key's cell is not zeroed", c.advance)
		}
	}
}

// TestCacheEvictCount checks least-recently-used eviction, and that the
// evicted key's cell (seen through keysource.CachedKey) is zeroed.
func TestCacheEvictCount(t *testing.T) {
	for _, c := range []struct {
		entries int
		touch   bool // unwrap stanza 0 again before the last one
		evicted int  // the stanza that leaves
	}{
		{entries: 1, evicted: 0},
		{entries: 2, evicted: 0},
		{entries: 2, touch: true, evicted: 1},
		{entries: 3, evicted: 0},
	} {
		t.Run(fmt.Sprintf("entries=%d,touch=%v", c.entries, c.touch), func(t *testing.T) {
			src := keysourcetest.New(keysourcetest.Options{})
			m := newManager(t, keysource.Options{Primary: src, DeferPool: true, CacheEntries: c.entries})
			n := c.entries + 1
			keys, sts := make([][]byte, n), make([]keysource.Stanza, n)
			for i := range n {
				keys[i] = randomKey(t)
				sts[i] = wrap(t, src, keys[i])
			}
			unwrap := func(i int) {
				t.Helper()
				got, err := m.UnwrapKey(testCtx(t), sts[i:i+1])
				if err != nil || !bytes.Equal(got, keys[i]) {
					t.Fatalf("stanza %d: %v (key equal: %v)", i, err, bytes.Equal(got, keys[i]))
				}
			}
			cells := make([][]byte, n)
			for i := range n - 1 {
				unwrap(i)
				cells[i] = keysource.CachedKey(m, sts[i])
			}
			if c.touch && n > 2 {
				unwrap(0)
			} else if c.touch {
				t.Fatal("touch needs 2 entries")
			}
			unwrap(n - 1)
			cells[n-1] = keysource.CachedKey(m, sts[n-1])
			for i, k := range cells {
				if zero := isZero(k); zero != (i == c.evicted) {
					t.Fatalf("stanza %d: cached key cleared=%v, want %v", i, zero, i == c.evicted)
				}
			}
			// The source's own slices were cleared once copied into cells.
			for i, k := range src.Returned() {
				if !isZero(k) {
					t.Fatalf("source's key %d still in its slice after the unwrap", i)
				}
			}
			calls := src.Calls(keysourcetest.OpUnwrap)
			unwrap(c.evicted)
			if got := src.Calls(keysourcetest.OpUnwrap); got != calls+1 {
				t.Fatalf("evicted stanza made %d calls, want 1", got-calls)
			}
		})
	}
}

func TestCacheEvictAge(t *testing.T) {
	const maxAge = time.Hour
	for _, c := range []struct {
		age     time.Duration
		evicted bool
	}{
		{age: 0},
		{age: maxAge - time.Second},
		{age: maxAge, evicted: true},
		{age: 3 * maxAge, evicted: true},
	} {
		t.Run(fmt.Sprintf("age=%v", c.age), func(t *testing.T) {
			clock := keysourcetest.NewClock(time.Unix(1e9, 0))
			src := keysourcetest.New(keysourcetest.Options{})
			m := newManager(t, keysource.Options{Primary: src, DeferPool: true, CacheMaxAge: maxAge, Now: clock.Now})
			key := randomKey(t)
			st := []keysource.Stanza{wrap(t, src, key)}
			if _, err := m.UnwrapKey(testCtx(t), st); err != nil {
				t.Fatal(err)
			}
			cell := keysource.CachedKey(m, st[0])
			clock.Advance(c.age)
			got, err := m.UnwrapKey(testCtx(t), st)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("after %v: %v (key equal: %v)", c.age, err, bytes.Equal(got, key))
			}
			want := int64(1)
			if c.evicted {
				want = 2
			}
			if n := src.Calls(keysourcetest.OpUnwrap); n != want {
				t.Fatalf("%d unwrap calls, want %d", n, want)
			}
			if isZero(cell) != c.evicted {
				t.Fatalf("first cached key cleared=%v, want %v", isZero(cell), c.evicted)
			}
		})
	}
}

// TestCoalesce holds the key source until all callers wait for the same
// stanza, so the single call proves coalescing, not caching.
func TestCoalesce(t *testing.T) {
	const callers = 64
	release := make(chan struct{})
	src := keysourcetest.New(keysourcetest.Options{Hook: holdUnwraps(release)})
	m := newManager(t, keysource.Options{Primary: src, DeferPool: true})
	var joined atomic.Int64
	keysource.SetJoinHook(m, func() {
		if joined.Add(1) == callers {
			close(release)
		}
	})
	key := randomKey(t)
	st := []keysource.Stanza{wrap(t, src, key)}
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			got, err := m.UnwrapKey(ctx, st)
			if err == nil && !bytes.Equal(got, key) {
				err = errors.New("wrong key")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if n := src.Calls(keysourcetest.OpUnwrap); n != 1 {
		t.Fatalf("%d unwrap calls, want 1", n)
	}
}

// TestUnwrapAccounting is the cache's promise to the KMS quota: 64
// goroutines unwrapping 1,000 headers written under a batched policy of
// 100 files per data key (so 10 distinct stanzas) make exactly 10 unwrap
// calls.
func TestUnwrapAccounting(t *testing.T) {
	const files, perKey, goroutines = 1000, 100, 64
	clock := keysourcetest.NewClock(time.Unix(1e9, 0))
	src := keysourcetest.NewGenerating(keysourcetest.Options{})
	w := newManager(t, keysource.Options{Primary: src, Policy: keysource.Policy{MaxFiles: perKey}, Now: clock.Now})
	ctx := testCtx(t)
	keys, headers := make([][]byte, files), make([][]keysource.Stanza, files)
	distinct := map[string]bool{}
	for i := range files {
		var err error
		if keys[i], headers[i], err = w.NewDataKey(ctx); err != nil {
			t.Fatal(err)
		}
		distinct[string(headers[i][0].Body)] = true
	}
	if len(distinct) != files/perKey {
		t.Fatalf("%d distinct stanzas, want %d", len(distinct), files/perKey)
	}

	r := newManager(t, keysource.Options{Primary: src, DeferPool: true})
	src.ResetCalls()
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			for j := range files {
				i := (j + g*files/goroutines) % files
				got, err := r.UnwrapKey(ctx, headers[i])
				if err != nil || !bytes.Equal(got, keys[i]) {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d unwraps failed or returned the wrong key", n)
	}
	if n := src.Calls(keysourcetest.OpUnwrap); n != files/perKey {
		t.Fatalf("%d unwrap calls, want %d", n, files/perKey)
	}
}

func TestUnwrapErrors(t *testing.T) {
	denied := fmt.Errorf("access denied: %w", keysource.ErrDenied)
	down := fmt.Errorf("connection refused: %w", keysource.ErrUnavailable)
	failing := func(err error) func(context.Context, keysourcetest.Op) error {
		return func(context.Context, keysourcetest.Op) error { return err }
	}
	good := keysourcetest.New(keysourcetest.Options{Type: "fake", KeyID: "good"})
	deniedSrc := keysourcetest.New(keysourcetest.Options{Type: "fake", KeyID: "denied", Hook: failing(denied)})
	downSrc := keysourcetest.New(keysourcetest.Options{Type: "other", KeyID: "down", Hook: failing(down)})
	stranger := keysourcetest.New(keysourcetest.Options{Type: "fake", KeyID: "stranger"})
	alien := keysourcetest.New(keysourcetest.Options{Type: "alien", KeyID: "far"})
	key := randomKey(t)
	stGood, stStranger, stAlien := wrap(t, good, key), wrap(t, stranger, key), wrap(t, alien, key)
	stDenied, stDown := stGood, stGood
	stDenied.KeyID, stDown.Type, stDown.KeyID = "denied", "other", "down"
	stBad := stGood
	stBad.Body = bytes.Clone(stGood.Body)
	stBad.Body[len(stBad.Body)-1] ^= 1

	m := newManager(t, keysource.Options{Primary: good, Escrow: []keysource.KeySource{deniedSrc, downSrc}, DeferPool: true})
	for _, c := range []struct {
		name     string
		stanzas  []keysource.Stanza
		want     error // nil: success
		contains []string
	}{
		{"none", nil, keysource.ErrInvalid, []string{"no stanzas"}},
		{"type=unknown", []keysource.Stanza{stAlien}, keysource.ErrNotMine,
			[]string{"alien:far", "fake:good", "fake:denied", "other:down"}},
		{"key=unknown", []keysource.Stanza{stStranger, stAlien}, keysource.ErrNotMine,
			[]string{"fake:stranger", "alien:far", "fake:good", "is not for fake:good"}},
		{"body=damaged", []keysource.Stanza{stBad}, keysource.ErrInvalid, []string{"stanza fake:good"}},
		{"denied", []keysource.Stanza{stDenied}, keysource.ErrDenied, []string{"stanza fake:denied", "access denied"}},
		{"denied+damaged", []keysource.Stanza{stBad, stDenied}, keysource.ErrDenied,
			[]string{"stanza fake:denied", "also keysource: stanza fake:good"}},
		{"unavailable+damaged", []keysource.Stanza{stDown, stBad}, keysource.ErrInvalid,
			[]string{"stanza fake:good", "also keysource: stanza other:down", "connection refused"}},
		{"unavailable,then-good", []keysource.Stanza{stAlien, stDown, stGood}, nil, nil},
		{"denied,then-good", []keysource.Stanza{stDenied, stGood}, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := m.UnwrapKey(testCtx(t), c.stanzas)
			if c.want == nil {
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("%v (key equal: %v)", err, bytes.Equal(got, key))
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			for _, s := range c.contains {
				if !strings.Contains(err.Error(), s) {
					t.Fatalf("error %q does not say %q", err, s)
				}
			}
			if bytes.Contains([]byte(err.Error()), stGood.Body[:8]) {
				t.Fatalf("error %q quotes a stanza body", err)
			}
		})
	}
}

// TestUnwrapCancel checks that a caller whose context ends returns at once,
// that the abandoned key-source call is cancelled, and that the next caller
// starts afresh.
func TestUnwrapCancel(t *testing.T) {
	var holding atomic.Bool
	holding.Store(true)
	entered, abandoned := make(chan struct{}, 1), make(chan struct{}, 1)
	src := keysourcetest.New(keysourcetest.Options{Hook: func(ctx context.Context, op keysourcetest.Op) error {
		if op != keysourcetest.OpUnwrap || !holding.Load() {
			return nil
		}
		entered <- struct{}{}
		<-ctx.Done()
		abandoned <- struct{}{}
		return ctx.Err()
	}})
	m := newManager(t, keysource.Options{Primary: src, DeferPool: true})
	key := randomKey(t)
	st := []keysource.Stanza{wrap(t, src, key)}

	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := m.UnwrapKey(ctx, st)
		done <- err
	}()
	wait(t, entered, "the unwrap call")
	cancel()
	if err := wait(t, done, "UnwrapKey to return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	wait(t, abandoned, "the abandoned call to be cancelled")

	holding.Store(false)
	got, err := m.UnwrapKey(testCtx(t), st)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("retry: %v (key equal: %v)", err, bytes.Equal(got, key))
	}
}

// TestCloseClearsKeys runs creates and opens concurrently with Close and
// checks that every key the source handed to the manager is cleared and
// that calls after Close fail with ErrClosed.
func TestCloseClearsKeys(t *testing.T) {
	src := keysourcetest.NewGenerating(keysourcetest.Options{})
	escrow := keysourcetest.New(keysourcetest.Options{Type: "escrow"})
	m, err := keysource.NewManager(keysource.Options{Primary: src, Escrow: []keysource.KeySource{escrow},
		Policy: keysource.Policy{MaxFiles: 3}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	var sts [][]keysource.Stanza
	for range 20 {
		_, s, err := m.NewDataKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, s)
	}
	var wg, started sync.WaitGroup
	started.Add(8)
	for g := range 8 {
		wg.Go(func() {
			for i := 0; i < 10000; i++ {
				if i == 100 {
					started.Done()
				}
				var err error
				if g%2 == 0 {
					_, _, err = m.NewDataKey(ctx)
				} else {
					_, err = m.UnwrapKey(ctx, sts[(i+g)%len(sts)][g%4/2:])
				}
				if err != nil {
					if !errors.Is(err, keysource.ErrClosed) {
						t.Errorf("goroutine %d: %v", g, err)
					}
					if i < 100 {
						started.Done()
					}
					return
				}
			}
		})
	}
	started.Wait() // every goroutine is under way
	m.Close()
	wg.Wait()
	for _, s := range []*keysourcetest.Source{src.Source, escrow} {
		for i, k := range s.Returned() {
			if !isZero(k) {
				t.Fatalf("%s: key %d not cleared after Close", s.Type(), i)
			}
		}
	}
	if _, err := m.UnwrapKey(ctx, sts[0]); !errors.Is(err, keysource.ErrClosed) {
		t.Fatalf("UnwrapKey after Close: %v", err)
	}
	if _, _, err := m.NewDataKey(ctx); !errors.Is(err, keysource.ErrClosed) {
		t.Fatalf("NewDataKey after Close: %v", err)
	}
	if err := m.WaitReady(ctx); !errors.Is(err, keysource.ErrClosed) {
		t.Fatalf("WaitReady after Close: %v", err)
	}
}

// TestManagerLockedCells gives the Manager a locked arena: the keys it
// keeps sit in locked cells while it runs, and Close zeroes and returns
// every one of them (the attack: reading keys out of swap, or out of a
// closed manager's memory).
func TestManagerLockedCells(t *testing.T) {
	for _, policy := range []string{"batched", "per-file"} {
		t.Run("policy="+policy, func(t *testing.T) {
			pol, err := keysource.ParsePolicy(policy)
			if err != nil {
				t.Fatal(err)
			}
			mem := secmem.New(secmem.Options{})
			src := keysourcetest.NewGenerating(keysourcetest.Options{})
			m, err := keysource.NewManager(keysource.Options{Primary: src, Policy: pol, Mem: mem})
			if err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t)
			var sts []keysource.Stanza
			for range 10 {
				_, s, err := m.NewDataKey(ctx)
				if err != nil {
					t.Fatal(err)
				}
				sts = append(sts, s[0])
			}
			key := randomKey(t)
			other := wrap(t, src, key)
			got := make([]byte, keysource.DataKeySize)
			if err := m.UnwrapKeyTo(ctx, got, []keysource.Stanza{other}); err != nil || !bytes.Equal(got, key) {
				t.Fatalf("UnwrapKeyTo: %v (key equal: %v)", err, bytes.Equal(got, key))
			}
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS == "linux" {
				if err := mem.LockError(); err != nil {
					t.Fatalf("key memory not locked: %v", err)
				}
			}
			cells := append(keysource.PoolKeys(m), keysource.CachedKey(m, other))
			for _, s := range sts {
				if c := keysource.CachedKey(m, s); c != nil {
					cells = append(cells, c)
				}
			}
			if mem.InUse() == 0 {
				t.Fatal("the manager holds no cells of its arena")
			}
			for i, k := range src.Returned() {
				if !isZero(k) {
					t.Fatalf("the source's key %d is still in its own slice", i)
				}
			}
			m.Close()
			if n := mem.InUse(); n != 0 {
				t.Fatalf("%d cells still allocated after Close", n)
			}
			for i, c := range cells {
				if !isZero(c) {
					t.Fatalf("cell %d not zeroed by Close", i)
				}
			}
		})
	}
}

package keysource_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// fakeSource returns a fake source named typ:id, generating data keys if
// gen, with hook.
func fakeSource(typ, id string, gen bool, hook func(context.Context, keysourcetest.Op) error) (keysource.KeySource, *keysourcetest.Source) {
	o := keysourcetest.Options{Type: typ, KeyID: id, Hook: hook}
	if gen {
		g := keysourcetest.NewGenerating(o)
		return g, g.Source
	}
	s := keysourcetest.New(o)
	return s, s
}

// wantStanzas fails the test unless sts name exactly the keys want.
func wantStanzas(t testing.TB, sts []keysource.Stanza, want ...string) {
	t.Helper()
	got := make([]string, len(sts))
	for i, s := range sts {
		got[i] = s.String()
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("stanzas %v, want %v", got, want)
	}
}

// recordingRand is a source of data keys that keeps every buffer it
// filled: the Manager reads a data key straight into its cell, so a test
// can see whether that cell was cleared.
type recordingRand struct {
	mu     sync.Mutex
	filled [][]byte
}

func (r *recordingRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0xa5
	}
	r.mu.Lock()
	r.filled = append(r.filled, p)
	r.mu.Unlock()
	return len(p), nil
}

func (r *recordingRand) buffers() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.filled...)
}

// TestUnwrapOnly is a volume being rewrapped from key A to key B: files
// still under A open through A, and no new file ever gets a stanza of A.
func TestUnwrapOnly(t *testing.T) {
	for _, sameType := range []bool{true, false} {
		for _, gen := range []bool{true, false} {
			t.Run(fmt.Sprintf("same-type=%v,generator=%v", sameType, gen), func(t *testing.T) {
				oldType := "old"
				if sameType {
					oldType = "fake"
				}
				_, a := fakeSource(oldType, "A", true, nil)
				b, _ := fakeSource("fake", "B", gen, nil)
				m := newManager(t, keysource.Options{Primary: b, UnwrapOnly: []keysource.KeySource{a},
					Policy: keysource.PerFile(), PoolSize: 2})
				ctx := testCtx(t)

				key := randomKey(t)
				underA := wrap(t, a, key)
				a.ResetCalls() // the test's own wrap
				got, err := m.UnwrapKey(ctx, []keysource.Stanza{underA})
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("file under the retiring key: %v (key equal: %v)", err, bytes.Equal(got, key))
				}
				for range 5 {
					_, sts, err := m.NewDataKey(ctx)
					if err != nil {
						t.Fatal(err)
					}
					wantStanzas(t, sts, "fake:B")
				}
				if err := m.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
				if n := a.Calls(keysourcetest.OpWrap) + a.Calls(keysourcetest.OpGenerate); n != 0 {
					t.Fatalf("the unwrap-only key wrapped or generated %d data keys", n)
				}

				// A stanza of a key nobody configured: the error lists
				// every configured key, the unwrap-only one marked.
				_, stranger := fakeSource(oldType, "C", false, nil)
				_, err = m.UnwrapKey(ctx, []keysource.Stanza{wrap(t, stranger, key)})
				if !errors.Is(err, keysource.ErrNotMine) || !strings.Contains(err.Error(), "fake:B, "+oldType+":A (unwrap only)") {
					t.Fatalf("err = %v, want ErrNotMine listing fake:B and %s:A (unwrap only)", err, oldType)
				}
			})
		}
	}
}

// TestSetKeysInFlight is a rewrap swapping key A for key B while the pool
// is making a data key under A: once SetKeys returns, every new file gets
// stanzas of B (and its escrow) only, the create that was waiting gets one
// too, and the data key made under A is cleared. The A call is held until
// after the swap: either cancelled by it (a source that honours its
// context) or let through after it (one that does not).
func TestSetKeysInFlight(t *testing.T) {
	for _, honoursCtx := range []bool{true, false} {
		for _, gen := range []bool{true, false} {
			t.Run(fmt.Sprintf("cancellable=%v,generator=%v", honoursCtx, gen), func(t *testing.T) {
				entered := make(chan struct{}, 1)
				release := make(chan struct{})
				hold := func(ctx context.Context, op keysourcetest.Op) error {
					if op == keysourcetest.OpUnwrap {
						return nil
					}
					select {
					case entered <- struct{}{}:
					default:
					}
					if !honoursCtx {
						<-release
						return nil
					}
					return holdUntil(ctx, release)
				}
				a, fa := fakeSource("fake", "A", gen, hold)
				b, _ := fakeSource("fake", "B", gen, nil)
				escrow, _ := fakeSource("escrow", "E", false, nil)
				rnd := &recordingRand{}
				m := newManager(t, keysource.Options{Primary: a, Policy: keysource.PerFile(),
					PoolSize: 1, RefillWorkers: 1, DeferPool: true, Rand: rnd})
				t.Cleanup(func() {
					select {
					case <-release:
					default:
						close(release)
					}
				})
				ctx := testCtx(t)

				type result struct {
					sts []keysource.Stanza
					err error
				}
				waiter := make(chan result, 1)
				go func() {
					_, sts, err := m.NewDataKey(ctx)
					waiter <- result{sts, err}
				}()
				// The create started the deferred pool, whose one worker
				// is now inside A; the create waits for it.
				wait(t, entered, "the refill under A")
				if err := m.SetKeys(b, []keysource.KeySource{escrow}, nil); err != nil {
					t.Fatal(err)
				}
				if !honoursCtx {
					close(release)
				}
				r := wait(t, waiter, "the waiting create")
				if r.err != nil {
					t.Fatalf("create waiting across the swap: %v", r.err)
				}
				wantStanzas(t, r.sts, "fake:B", "escrow:E")
				for i := range 5 {
					_, sts, err := m.NewDataKey(ctx)
					if err != nil {
						t.Fatalf("create %d: %v", i, err)
					}
					wantStanzas(t, sts, "fake:B", "escrow:E")
				}
				if n := fa.Calls(keysourcetest.OpWrap) + fa.Calls(keysourcetest.OpGenerate); n != 1 {
					t.Fatalf("%d calls to A, want only the one in flight at the swap", n)
				}
				if gen {
					for _, k := range fa.Returned() {
						if !isZero(k) {
							t.Fatal("data key generated under A not cleared")
						}
					}
				} else if bufs := rnd.buffers(); len(bufs) == 0 || !isZero(bufs[0]) {
					t.Fatal("data key made for A not cleared after the swap")
				}
			})
		}
	}
}

// TestSetKeysPool swaps keys while the pool holds ready data keys of A and
// a file is being served from one: those keys are cleared and never handed
// out again, and A stays usable for unwrapping only if it is kept as an
// unwrap-only key. Data keys already unwrapped stay cached.
func TestSetKeysPool(t *testing.T) {
	for _, keepOld := range []bool{true, false} {
		t.Run(fmt.Sprintf("unwrap-only-old=%v", keepOld), func(t *testing.T) {
			a, fa := fakeSource("fake", "A", true, nil)
			b, _ := fakeSource("fake", "B", true, nil)
			m := newManager(t, keysource.Options{Primary: a, PoolSize: 3})
			ctx := testCtx(t)
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			k1, s1, err := m.NewDataKey(ctx) // becomes the batch being served
			if err != nil {
				t.Fatal(err)
			}
			wantStanzas(t, s1, "fake:A")
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			pooled := keysource.PoolKeys(m)
			if len(pooled) != 4 {
				t.Fatalf("%d pooled keys, want the served one and 3 ready", len(pooled))
			}
			var unwrapOnly []keysource.KeySource
			if keepOld {
				unwrapOnly = []keysource.KeySource{a}
			}
			if err := m.SetKeys(b, nil, unwrapOnly); err != nil {
				t.Fatal(err)
			}
			for i, k := range pooled {
				if !isZero(k) {
					t.Fatalf("pooled data key %d of A not cleared by SetKeys", i)
				}
			}
			k2, s2, err := m.NewDataKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wantStanzas(t, s2, "fake:B")
			if bytes.Equal(k1, k2) {
				t.Fatal("the data key being served under A was handed out after the swap")
			}

			// A file under A that was never cached needs A.
			underA := wrap(t, a, randomKey(t))
			fa.ResetCalls() // the test's own wrap
			// The first file's key was cached when it was handed out.
			got, err := m.UnwrapKey(ctx, s1)
			if err != nil || !bytes.Equal(got, k1) {
				t.Fatalf("cached key after the swap: %v", err)
			}
			if n := fa.Calls(keysourcetest.OpUnwrap); n != 0 {
				t.Fatalf("%d unwrap calls for a cached key", n)
			}
			_, err = m.UnwrapKey(ctx, []keysource.Stanza{underA})
			switch {
			case keepOld && err != nil:
				t.Fatalf("file under the unwrap-only key: %v", err)
			case !keepOld && !errors.Is(err, keysource.ErrNotMine):
				t.Fatalf("file under a dropped key: %v, want ErrNotMine", err)
			}
			if n := fa.Calls(keysourcetest.OpGenerate) + fa.Calls(keysourcetest.OpWrap); n != 0 {
				t.Fatalf("A made %d data keys after the swap", n)
			}
		})
	}
}

// TestSetKeysAfterError checks that a pool that failed under the old key
// does not hand the old key's error to creates under the new one.
func TestSetKeysAfterError(t *testing.T) {
	injected := fmt.Errorf("key disabled: %w", keysource.ErrDenied)
	a, _ := fakeSource("fake", "A", true, func(context.Context, keysourcetest.Op) error { return injected })
	b, _ := fakeSource("fake", "B", true, nil)
	m := newManager(t, keysource.Options{Primary: a, RefillWorkers: 1})
	ctx := testCtx(t)
	if err := m.WaitReady(ctx); !errors.Is(err, injected) {
		t.Fatalf("WaitReady under A: %v, want the injected error", err)
	}
	if err := m.SetKeys(b, nil, nil); err != nil {
		t.Fatal(err)
	}
	_, sts, err := m.NewDataKey(ctx)
	if err != nil {
		t.Fatalf("first create under B: %v", err)
	}
	wantStanzas(t, sts, "fake:B")
}

// TestSetKeysConcurrent races creates against swaps: a create that starts
// after SetKeys returned never gets a stanza of an older key.
func TestSetKeysConcurrent(t *testing.T) {
	const swaps, goroutines = 20, 4
	for _, gen := range []bool{true, false} {
		t.Run(fmt.Sprintf("generator=%v", gen), func(t *testing.T) {
			keys := make([]keysource.KeySource, swaps+1)
			for i := range keys {
				keys[i], _ = fakeSource("fake", fmt.Sprint(i), gen, nil)
			}
			m := newManager(t, keysource.Options{Primary: keys[0], Policy: keysource.Policy{MaxFiles: 3}})
			ctx := testCtx(t)
			var current atomic.Int64 // index of the key set by the last SetKeys that returned
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range goroutines {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						floor := current.Load()
						_, sts, err := m.NewDataKey(ctx)
						if err != nil {
							t.Error(err)
							return
						}
						var got int64
						fmt.Sscan(sts[0].KeyID, &got)
						if len(sts) != 1 || got < floor {
							t.Errorf("create started under key %d got stanzas %v", floor, sts)
							return
						}
					}
				})
			}
			for i := 1; i <= swaps; i++ {
				if err := m.SetKeys(keys[i], nil, keys[:i]); err != nil {
					t.Fatal(err)
				}
				current.Store(int64(i))
				if _, _, err := m.NewDataKey(ctx); err != nil { // let the creators run under key i
					t.Fatal(err)
				}
			}
			close(stop)
			wg.Wait()
		})
	}
}

func TestSetKeysErrors(t *testing.T) {
	src := keysourcetest.New(keysourcetest.Options{})
	for _, c := range []struct {
		name       string
		primary    keysource.KeySource
		escrow     []keysource.KeySource
		unwrapOnly []keysource.KeySource
		closed     bool
		want       error
	}{
		{name: "primary=nil"},
		{name: "escrow=nil", primary: src, escrow: []keysource.KeySource{src, nil}},
		{name: "unwrap-only=nil", primary: src, unwrapOnly: []keysource.KeySource{nil}},
		{name: "closed", primary: src, closed: true, want: keysource.ErrClosed},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newManager(t, keysource.Options{Primary: src, DeferPool: true})
			if c.closed {
				m.Close()
			}
			err := m.SetKeys(c.primary, c.escrow, c.unwrapOnly)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("SetKeys: %v, want an error (%v)", err, c.want)
			}
			if c.closed {
				return
			}
			// A refused swap leaves the old keys in place.
			_, sts, err := m.NewDataKey(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			wantStanzas(t, sts, "fake:fake-key")
		})
	}
}

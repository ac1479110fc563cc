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
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// TestGenerateCounts is the pool's promise to the KMS quota: after the pool
// is warm, 1,000 creates under batched max-files=M make at most 1000/M + 2
// generate calls (by design exactly ceil(1000/M): each call replaces a
// used-up data key), and exactly 1,000 under per-file once the refill has
// settled.
func TestGenerateCounts(t *testing.T) {
	const files, goroutines = 1000, 4
	for _, policy := range []string{"per-file", "batched:max-files=16", "batched:max-files=100", "batched"} {
		for _, gen := range []bool{true, false} {
			name := map[bool]string{true: "generator", false: "wrap"}[gen]
			t.Run(fmt.Sprintf("policy=%s,source=%s", policy, name), func(t *testing.T) {
				pol, err := keysource.ParsePolicy(policy)
				if err != nil {
					t.Fatal(err)
				}
				var src keysource.KeySource
				var fake *keysourcetest.Source
				op := keysourcetest.OpWrap
				if gen {
					g := keysourcetest.NewGenerating(keysourcetest.Options{})
					src, fake, op = g, g.Source, keysourcetest.OpGenerate
				} else {
					fake = keysourcetest.New(keysourcetest.Options{})
					src = fake
				}
				clock := keysourcetest.NewClock(time.Unix(1e9, 0))
				m := newManager(t, keysource.Options{Primary: src, Policy: pol, Now: clock.Now})
				ctx := testCtx(t)
				if err := m.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
				fake.ResetCalls()

				var mu sync.Mutex
				uses := map[string]int{}
				var wg sync.WaitGroup
				for range goroutines {
					wg.Go(func() {
						for range files / goroutines {
							key, _, err := m.NewDataKey(ctx)
							if err != nil {
								t.Error(err)
								return
							}
							mu.Lock()
							uses[string(key)]++
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				if err := m.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
				calls := fake.Calls(op)
				want := int64((files + pol.MaxFiles - 1) / pol.MaxFiles)
				if calls != want || (pol.MaxFiles > 1 && calls > int64(files/pol.MaxFiles+2)) {
					t.Fatalf("%d %v calls for %d files, want %d", calls, op, files, want)
				}
				for _, n := range uses {
					if n > pol.MaxFiles {
						t.Fatalf("a data key served %d files, policy allows %d", n, pol.MaxFiles)
					}
				}
				if len(uses) != int(want) {
					t.Fatalf("%d distinct data keys, want %d", len(uses), want)
				}
			})
		}
	}
}

func TestPolicyMaxAge(t *testing.T) {
	const maxAge = time.Minute
	for _, c := range []struct {
		idle, between time.Duration // before the first create; between the two
		same          bool
	}{
		{between: 0, same: true},
		{between: maxAge - time.Second, same: true},
		{between: maxAge, same: false},
		{idle: 10 * maxAge, between: 0, same: true}, // age counts from the first file
	} {
		t.Run(fmt.Sprintf("idle=%v,between=%v", c.idle, c.between), func(t *testing.T) {
			clock := keysourcetest.NewClock(time.Unix(1e9, 0))
			src := keysourcetest.NewGenerating(keysourcetest.Options{})
			m := newManager(t, keysource.Options{Primary: src, Now: clock.Now,
				Policy: keysource.Policy{MaxFiles: 100, MaxAge: maxAge}})
			ctx := testCtx(t)
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			clock.Advance(c.idle)
			k1, s1, err := m.NewDataKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			clock.Advance(c.between)
			k2, s2, err := m.NewDataKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if same := bytes.Equal(k1, k2) && bytes.Equal(s1[0].Body, s2[0].Body); same != c.same {
				t.Fatalf("same data key: %v, want %v", same, c.same)
			}
			if c.same {
				return
			}
			// The retired data key is cleared in the manager.
			for _, k := range src.Returned() {
				if bytes.Equal(k, k1) {
					t.Fatal("expired data key still held uncleared")
				}
			}
		})
	}
}

// TestEscrow checks that every stanza of a new file wraps the same data
// key: each one, alone, opens through a manager that has never seen it.
func TestEscrow(t *testing.T) {
	primary := keysourcetest.NewGenerating(keysourcetest.Options{Type: "fake", KeyID: "primary"})
	escrows := []keysource.KeySource{
		keysourcetest.New(keysourcetest.Options{Type: "escrow", KeyID: "hsm"}),
		keysourcetest.New(keysourcetest.Options{Type: "fake", KeyID: "second"}), // same type as primary
	}
	m := newManager(t, keysource.Options{Primary: primary, Escrow: escrows})
	ctx := testCtx(t)
	key, sts, err := m.NewDataKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"fake:primary", "escrow:hsm", "fake:second"}; len(sts) != len(want) {
		t.Fatalf("%d stanzas, want %v", len(sts), want)
	} else {
		for i, s := range sts {
			if s.String() != want[i] {
				t.Fatalf("stanza %d is %v, want %s", i, s, want[i])
			}
		}
	}
	for i, s := range sts {
		t.Run("stanza="+s.String(), func(t *testing.T) {
			r := newManager(t, keysource.Options{Primary: primary, Escrow: escrows, DeferPool: true})
			got, err := r.UnwrapKey(ctx, sts[i:i+1])
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("%v (key equal: %v)", err, bytes.Equal(got, key))
			}
		})
	}
	t.Run("stanzas-are-copies", func(t *testing.T) {
		_, again, err := m.NewDataKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(again[0].Body)
		clear(sts[0].Body)
		if !bytes.Equal(again[0].Body, want) {
			t.Fatal("stanza bodies of two files share memory")
		}
	})
}

// TestNewDataKeyCancel checks that a create waiting on an empty pool whose
// key service hangs returns when its context ends.
func TestNewDataKeyCancel(t *testing.T) {
	for _, c := range []struct {
		name string
		want error
	}{
		{"cancel", context.Canceled},
		{"deadline", context.DeadlineExceeded},
	} {
		t.Run(c.name, func(t *testing.T) {
			entered := make(chan struct{}, 1)
			src := keysourcetest.NewGenerating(keysourcetest.Options{Hook: func(ctx context.Context, _ keysourcetest.Op) error {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-ctx.Done() // the service hangs until the manager closes
				return ctx.Err()
			}})
			m := newManager(t, keysource.Options{Primary: src, PoolSize: 1})
			wait(t, entered, "the generate call")
			ctx, cancel := context.WithCancel(testCtx(t))
			if c.want == context.DeadlineExceeded {
				ctx, cancel = context.WithTimeout(testCtx(t), 10*time.Millisecond)
			}
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, _, err := m.NewDataKey(ctx)
				done <- err
			}()
			if c.want == context.Canceled {
				cancel()
			}
			if err := wait(t, done, "NewDataKey to return"); !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
		})
	}
}

// TestGenerateError checks that a failing key service makes creates fail
// with its error instead of hanging, is not asked in a loop, and that the
// pool recovers once the service does.
func TestGenerateError(t *testing.T) {
	injected := fmt.Errorf("throttled: %w", keysource.ErrUnavailable)
	var failing atomic.Bool
	failing.Store(true)
	src := keysourcetest.NewGenerating(keysourcetest.Options{Hook: func(context.Context, keysourcetest.Op) error {
		if failing.Load() {
			return injected
		}
		return nil
	}})
	m := newManager(t, keysource.Options{Primary: src, RefillWorkers: 1})
	ctx := testCtx(t)
	if err := m.WaitReady(ctx); !errors.Is(err, injected) {
		t.Fatalf("WaitReady: %v, want the injected error", err)
	}
	// One failure, and one retry if WaitReady found the pool paused.
	c0 := src.Calls(keysourcetest.OpGenerate)
	if c0 < 1 || c0 > 2 {
		t.Fatalf("%d generate calls before WaitReady failed, want 1 or 2 (no retry loop)", c0)
	}
	for i := range 3 {
		if _, _, err := m.NewDataKey(ctx); !errors.Is(err, injected) {
			t.Fatalf("create %d: %v, want the injected error", i, err)
		}
	}
	if n := src.Calls(keysourcetest.OpGenerate) - c0; n > 3 {
		t.Fatalf("%d generate calls for 3 failed creates, want at most one each", n)
	}
	failing.Store(false)
	var err error
	for range 2 { // the first may still see the last failure
		if _, _, err = m.NewDataKey(ctx); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady after recovery: %v", err)
	}
}

func TestDeferPool(t *testing.T) {
	src := keysourcetest.NewGenerating(keysourcetest.Options{})
	m := newManager(t, keysource.Options{Primary: src, DeferPool: true, Policy: keysource.PerFile()})
	if n := src.Calls(keysourcetest.OpGenerate); n != 0 {
		t.Fatalf("%d generate calls before any demand", n)
	}
	ctx := testCtx(t)
	if _, _, err := m.NewDataKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNewManagerErrors(t *testing.T) {
	src := keysourcetest.New(keysourcetest.Options{})
	for _, c := range []struct {
		name string
		o    keysource.Options
	}{
		{"primary=nil", keysource.Options{}},
		{"escrow=nil", keysource.Options{Primary: src, Escrow: []keysource.KeySource{nil}}},
		{"max-files=-1", keysource.Options{Primary: src, Policy: keysource.Policy{MaxFiles: -1}}},
		{"pool=-1", keysource.Options{Primary: src, PoolSize: -1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if m, err := keysource.NewManager(c.o); err == nil {
				m.Close()
				t.Fatal("no error")
			}
		})
	}
}

// TestEscrowWrapError checks that a data key whose escrow wrap fails is
// cleared and the error names the escrow key.
func TestEscrowWrapError(t *testing.T) {
	injected := fmt.Errorf("token removed: %w", keysource.ErrUnavailable)
	primary := keysourcetest.NewGenerating(keysourcetest.Options{})
	escrow := keysourcetest.New(keysourcetest.Options{Type: "escrow", KeyID: "hsm",
		Hook: func(context.Context, keysourcetest.Op) error { return injected }})
	m := newManager(t, keysource.Options{Primary: primary, Escrow: []keysource.KeySource{escrow}, RefillWorkers: 1})
	err := m.WaitReady(testCtx(t))
	if !errors.Is(err, injected) || !strings.Contains(err.Error(), "escrow key escrow:hsm") {
		t.Fatalf("WaitReady: %v, want the injected error naming escrow:hsm", err)
	}
	for i, k := range primary.Returned() {
		if !isZero(k) {
			t.Fatalf("data key %d not cleared after its escrow wrap failed", i)
		}
	}
}

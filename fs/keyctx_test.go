package fs

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestKeyContext checks the lazily timed key context against what
// context.WithTimeout promises: its deadline ends it (and contexts made
// from it), and cancel ends it whether or not its timer was ever started.
func TestKeyContext(t *testing.T) {
	r := &root{opts: Options{KeyTimeout: 20 * time.Millisecond}}
	waitDone := func(t *testing.T, ctx context.Context, want error) {
		t.Helper()
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("context not done after 10 s")
		}
		if err := ctx.Err(); !errors.Is(err, want) {
			t.Fatalf("Err %v, want %v", err, want)
		}
	}
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := r.keyContext()
		defer cancel()
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > 20*time.Millisecond {
			t.Fatalf("deadline %v %t", d, ok)
		}
		if err := ctx.Err(); err != nil {
			t.Fatalf("fresh context: %v", err)
		}
		child, stop := context.WithTimeout(ctx, time.Hour)
		defer stop()
		waitDone(t, child, context.DeadlineExceeded)
		waitDone(t, ctx, context.DeadlineExceeded)
	})
	t.Run("cancel-unused", func(t *testing.T) {
		ctx, cancel := r.keyContext()
		cancel()
		waitDone(t, ctx, context.Canceled)
	})
	t.Run("cancel-used", func(t *testing.T) {
		ctx, cancel := r.keyContext()
		child, stop := context.WithCancel(ctx)
		defer stop()
		cancel()
		waitDone(t, child, context.Canceled)
		waitDone(t, ctx, context.Canceled)
	})
}

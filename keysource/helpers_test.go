package keysource_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// testTimeout bounds every wait in these tests; nothing should come close.
const testTimeout = 30 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newManager(t testing.TB, o keysource.Options) *keysource.Manager {
	t.Helper()
	m, err := keysource.NewManager(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, keysource.DataKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func wrap(t testing.TB, src keysource.KeySource, key []byte) keysource.Stanza {
	t.Helper()
	s, err := src.Wrap(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// holdUnwraps returns a hook that holds every Unwrap until release is
// closed or the call's context ends.
func holdUnwraps(release <-chan struct{}) func(context.Context, keysourcetest.Op) error {
	return func(ctx context.Context, op keysourcetest.Op) error {
		if op != keysourcetest.OpUnwrap {
			return nil
		}
		return holdUntil(ctx, release)
	}
}

// holdUntil waits until release is closed (and returns nil) or ctx ends
// (and returns its error).
func holdUntil(ctx context.Context, release <-chan struct{}) error {
	select {
	case <-release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait receives from ch or fails the test after testTimeout.
func wait[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// harness lets this program use internal/kmstest, whose helpers take a
// testing.TB: it implements the methods those helpers call (Helper,
// Fatal[f], Skip[f], Error[f], Log[f], Failed, Cleanup, TempDir, Name).
// Any other testing.TB method panics on the nil embedded interface.
//
// Fatalf and Skipf abort the helper by panicking; call helpers through
// do, which turns that into an error. Cleanups run, last first, in close.
// A harness is safe for concurrent use.
type harness struct {
	testing.TB // nil: only the methods below may be called

	dir string    // parent of TempDir's directories
	log io.Writer // Logf and Errorf write here

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// abort is the panic value of Fatalf and Skipf.
type abort struct{ msg string }

func newHarness(dir string, log io.Writer) *harness { return &harness{dir: dir, log: log} }

// do runs f and returns the message of a Fatalf or Skipf it called as an
// error; other panics pass through.
func (h *harness) do(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			a, ok := r.(abort)
			if !ok {
				panic(r)
			}
			err = errors.New(a.msg)
		}
	}()
	f()
	return nil
}

// close runs the registered cleanups, last registered first.
func (h *harness) close() {
	for {
		h.mu.Lock()
		n := len(h.cleanups)
		if n == 0 {
			h.mu.Unlock()
			return
		}
		f := h.cleanups[n-1]
		h.cleanups = h.cleanups[:n-1]
		h.mu.Unlock()
		f()
	}
}

func (h *harness) Helper()      {}
func (h *harness) Name() string { return "fsbench" }

func (h *harness) Failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

func (h *harness) fail() {
	h.mu.Lock()
	h.failed = true
	h.mu.Unlock()
}

func (h *harness) Fatalf(format string, args ...any) {
	h.fail()
	panic(abort{fmt.Sprintf(format, args...)})
}

func (h *harness) Fatal(args ...any) { h.fail(); panic(abort{fmt.Sprint(args...)}) }

// Skipf is fatal here: the benchmark needs what a test would skip without.
func (h *harness) Skipf(format string, args ...any) { h.Fatalf(format, args...) }
func (h *harness) Skip(args ...any)                 { h.Fatal(args...) }

func (h *harness) Errorf(format string, args ...any) {
	h.fail()
	h.Logf(format, args...)
}

func (h *harness) Error(args ...any) { h.fail(); h.Log(args...) }

func (h *harness) Logf(format string, args ...any) {
	fmt.Fprintf(h.log, "kmstest: "+format+"\n", args...)
}

func (h *harness) Log(args ...any) { fmt.Fprintln(h.log, append([]any{"kmstest:"}, args...)...) }

func (h *harness) Cleanup(f func()) {
	h.mu.Lock()
	h.cleanups = append(h.cleanups, f)
	h.mu.Unlock()
}

// TempDir returns a new directory under the harness's directory, removed
// by close.
func (h *harness) TempDir() string {
	d, err := os.MkdirTemp(h.dir, "kmstest-")
	if err != nil {
		h.Fatalf("TempDir: %v", err)
	}
	h.Cleanup(func() { os.RemoveAll(d) })
	return d
}

package fusetest_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

func TestPollBounded(t *testing.T) {
	calls := 0
	if fusetest.Poll(20*time.Millisecond, func() bool { calls++; return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
	if calls < 2 {
		t.Errorf("Poll checked %d times in 20ms, want at least 2", calls)
	}
	n := 0
	if !fusetest.Poll(time.Minute, func() bool { n++; return n == 3 }) {
		t.Fatal("Poll missed a condition that held on the third check")
	}
}

func TestLogBuffer(t *testing.T) {
	var l fusetest.LogBuffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				l.Write([]byte("x"))
			}
		})
	}
	wg.Wait()
	if got := len(l.String()); got != 400 {
		t.Fatalf("concurrent writes kept %d bytes, want 400", got)
	}
	m := l.Mark()
	l.Write([]byte("after"))
	if got := l.Since(m); got != "after" {
		t.Errorf("Since(mark) = %q, want %q", got, "after")
	}
	if got := l.Tail(3); got != "ter" {
		t.Errorf("Tail(3) = %q, want %q", got, "ter")
	}
	if got := l.Since(1 << 20); got != "" {
		t.Errorf("Since past the end = %q, want empty", got)
	}
	if !strings.HasPrefix(l.String(), "xxxx") {
		t.Errorf("String lost the start: %.10q", l.String())
	}
}

package awskms_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// Retry n waits in [0, min(cap, base·2^(n-1))), and covers that range.
func TestBackoffDelay(t *testing.T) {
	const base, cap = 100 * time.Millisecond, 5 * time.Second
	tests := []struct {
		attempt int
		ceil    time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{6, 3200 * time.Millisecond},
		{7, cap},
		{64, cap},
		{1000, cap},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("attempt=%d", tt.attempt), func(t *testing.T) {
			var lo, hi time.Duration = tt.ceil, 0
			for range 1000 {
				d, err := awskms.BackoffDelay(base, cap, rand.Reader, tt.attempt)
				if err != nil {
					t.Fatal(err)
				}
				if d < 0 || d >= tt.ceil {
					t.Fatalf("delay %v outside [0, %v)", d, tt.ceil)
				}
				lo, hi = min(lo, d), max(hi, d)
			}
			if lo > tt.ceil/10 || hi < tt.ceil*9/10 {
				t.Errorf("1000 delays span [%v, %v], want most of [0, %v)", lo, hi, tt.ceil)
			}
		})
	}
	t.Run("rand=failing", func(t *testing.T) {
		d, err := awskms.BackoffDelay(base, cap, bytes.NewReader(nil), 2)
		if err != nil || d != 100*time.Millisecond {
			t.Errorf("delay = %v, %v; want the mean, 100ms", d, err)
		}
	})
	t.Run("base=0", func(t *testing.T) {
		if d, _ := awskms.BackoffDelay(0, cap, rand.Reader, 3); d != 0 {
			t.Errorf("delay = %v, want 0", d)
		}
	})
}

package awskms_test

import (
	"testing"
	"time"

	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// The standard configuration chain finds the emulator through
// AWS_ENDPOINT_URL_KMS.
func TestStandardConfigChain(t *testing.T) {
	e := fusetest.KMS(t)
	e.SetAWSEnv(t, e.Endpoint)
	c := kmstest.NewCounter()
	ks, err := awskms.Open(testContext(t), spec(kmstest.Alias), awskms.Options{VolumeID: volume1, APIOptions: []func(*middleware.Stack) error{c.Register}})
	if err != nil {
		t.Fatal(err)
	}
	if ks.KeyID() != e.Symmetric.ARN {
		t.Fatalf("KeyID = %s, want %s", ks.KeyID(), e.Symmetric.ARN)
	}
	dk := newDataKey()
	mustUnwrap(t, ks, mustWrap(t, ks, dk), dk)
	if got := c.Snapshot(); got["DescribeKey"] != 1 || got["Encrypt"] != 1 || got["Decrypt"] != 1 {
		t.Errorf("calls = %v", got)
	}
}

// AWS_MAX_ATTEMPTS bounds attempts when Options.MaxAttempts is 0, whatever
// the other retry fields say; a MaxAttempts that is set wins over it, and
// 1 or less makes a single attempt.
func TestStandardConfigMaxAttempts(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		name     string
		o        awskms.Options
		attempts int
	}{
		{"max-attempts=0", awskms.Options{}, 2},
		{"max-attempts=0,base-delay=1ms", awskms.Options{BaseDelay: time.Millisecond, MaxBackoff: 2 * time.Millisecond}, 2},
		{"max-attempts=3", awskms.Options{MaxAttempts: 3, BaseDelay: time.Millisecond}, 3},
		{"max-attempts=1", awskms.Options{MaxAttempts: 1}, 1},
		{"max-attempts=-1", awskms.Options{MaxAttempts: -1}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name+",env=2", func(t *testing.T) {
			e.SetAWSEnv(t, kmstest.ClosedEndpoint(t))
			t.Setenv("AWS_MAX_ATTEMPTS", "2")
			c := kmstest.NewCounter()
			o := tt.o
			o.VolumeID = volume1
			o.APIOptions = []func(*middleware.Stack) error{c.Register}
			_, err := awskms.Open(testContext(t), spec(kmstest.Alias), o)
			wantErr(t, err, keysource.ErrUnavailable, "cannot reach KMS")
			if got := c.Attempts("DescribeKey"); got != tt.attempts {
				t.Errorf("attempts = %d, want %d", got, tt.attempts)
			}
		})
	}
}

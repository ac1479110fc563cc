package volume_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
	"github.com/kmsfs/kmsfs/volume"
)

// TestCheckRoundTripLeastPrivilege: a key policy that grants a generating
// source only GenerateDataKey and Decrypt (no Encrypt, as AWS's least
// privilege for a mount) passes the check; one that cannot generate is
// checked with Wrap; a wrap-only source never unwraps.
func TestCheckRoundTripLeastPrivilege(t *testing.T) {
	errDenied := errors.New("denied by the key policy")
	deny := func(denied ...keysourcetest.Op) func(context.Context, keysourcetest.Op) error {
		return func(_ context.Context, op keysourcetest.Op) error {
			for _, d := range denied {
				if op == d {
					return errDenied
				}
			}
			return nil
		}
	}
	tests := []struct {
		name     string
		src      keysource.KeySource
		wrapOnly bool
		want     string // "" means success
	}{
		{"generating,no-encrypt", keysourcetest.NewGenerating(keysourcetest.Options{Hook: deny(keysourcetest.OpWrap)}), false, ""},
		{"generating,no-decrypt", keysourcetest.NewGenerating(keysourcetest.Options{Hook: deny(keysourcetest.OpUnwrap)}), false, "unwrapping a test key"},
		{"generating,no-generate", keysourcetest.NewGenerating(keysourcetest.Options{Hook: deny(keysourcetest.OpGenerate)}), false, "making a test data key"},
		{"wrapping,no-encrypt", keysourcetest.New(keysourcetest.Options{Hook: deny(keysourcetest.OpWrap)}), false, "wrapping a test key"},
		{"wrap-only,no-decrypt", keysourcetest.New(keysourcetest.Options{Hook: deny(keysourcetest.OpUnwrap)}), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := volume.CheckRoundTrip(context.Background(), tt.src, tt.wrapOnly)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("CheckRoundTrip: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errDenied)):
				t.Fatalf("CheckRoundTrip: %v, want %q wrapping the denial", err, tt.want)
			}
		})
	}
}

package awskms_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// setAWSEnv points the standard configuration chain at endpoint, with
// region and credentials from the environment and no config files.
func setAWSEnv(t *testing.T, e *kmstest.Emulator, endpoint string) {
	t.Helper()
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_KMS":        endpoint,
		"AWS_REGION":                  e.Region,
		"AWS_ACCESS_KEY_ID":           "AKIDKMSFSTEST",
		"AWS_SECRET_ACCESS_KEY":       "kmsfs-test-secret",
		"AWS_CONFIG_FILE":             empty,
		"AWS_SHARED_CREDENTIALS_FILE": empty,
		"AWS_PROFILE":                 "",
		"AWS_ENDPOINT_URL":            "",
		"AWS_MAX_ATTEMPTS":            "",
	} {
		t.Setenv(k, v)
	}
}

// The standard configuration chain finds the emulator through
// AWS_ENDPOINT_URL_KMS.
func TestStandardConfigChain(t *testing.T) {
	e := fusetest.KMS(t)
	setAWSEnv(t, e, e.Endpoint)
	c := kmstest.NewCounter()
	ks, err := awskms.New(testContext(t), kmstest.Alias, volume1, awskms.WithAPIOptions(c.Register))
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

// AWS_MAX_ATTEMPTS bounds attempts when WithRetry is not given.
func TestStandardConfigMaxAttempts(t *testing.T) {
	e := fusetest.KMS(t)
	setAWSEnv(t, e, kmstest.ClosedEndpoint(t))
	t.Setenv("AWS_MAX_ATTEMPTS", "2")
	c := kmstest.NewCounter()
	_, err := awskms.New(testContext(t), kmstest.Alias, volume1, awskms.WithAPIOptions(c.Register))
	wantErr(t, err, keysource.ErrUnavailable, "after 2 attempts")
	if got := c.Attempts("DescribeKey"); got != 2 {
		t.Errorf("attempts = %d, want 2", got)
	}
}

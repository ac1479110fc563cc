package awskms_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// Keys kmsfs must refuse when a source is built.
func TestOpenRefuses(t *testing.T) {
	e := fusetest.KMS(t)
	otherRegion := strings.Replace(e.Symmetric.ARN, ":"+e.Region+":", ":us-east-1:", 1)
	tests := []struct {
		name     string
		key      string
		region   string // client region, if not the emulator's
		sentinel error
		words    []string
		calls    int // KMS calls expected, -1 for "don't care"
	}{
		{"key=sign-verify", e.RSASign.ARN, "", keysource.ErrInvalid, []string{e.RSASign.ARN, "SIGN_VERIFY", "ENCRYPT_DECRYPT"}, 1},
		{"key=disabled", e.Disabled.ARN, "", keysource.ErrDenied, []string{e.Disabled.ARN, "disabled", "enable-key"}, 1},
		{"key=unknown-alias", "alias/no-such-alias", "", keysource.ErrInvalid, []string{"alias/no-such-alias", "DescribeKey", "no such key or alias"}, 1},
		{"key=unknown-id", "6b6d7366-dead-4000-8000-000000000000", "", keysource.ErrInvalid, []string{"no such key or alias"}, 1},
		{"key=empty", "", "", keysource.ErrInvalid, []string{"key ID, key ARN, alias/NAME"}, 0},
		{"key=malformed", "alias", "", keysource.ErrInvalid, nil, -1},
		{"key=s3-arn", "arn:aws:s3:::bucket", "", keysource.ErrInvalid, []string{"not a KMS ARN"}, 0},
		{"key=arn-other-region", otherRegion, "", keysource.ErrInvalid, []string{"region us-east-1", "configured for " + e.Region}, 0},
		// The emulator answers for its own region whatever the client's;
		// real KMS would answer NotFound. Either way the user hears why.
		{"key=alias,region=us-east-1", kmstest.Alias, "us-east-1", keysource.ErrInvalid, []string{e.Symmetric.ARN, "region " + e.Region, "configured for us-east-1"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.Config()
			if tt.region != "" {
				cfg.Region = tt.region
			}
			c := kmstest.NewCounter()
			_, err := newSource(t, e, tt.key, volume1, c, awskms.Options{Config: &cfg})
			wantErr(t, err, tt.sentinel, tt.words...)
			if tt.calls >= 0 && c.Total() != tt.calls {
				t.Errorf("KMS calls = %v, want %d", c.Snapshot(), tt.calls)
			}
		})
	}
}

// A key disabled or scheduled for deletion after the source was built:
// every operation names the cause, and the deletion date.
func TestKeyStateChanges(t *testing.T) {
	e := fusetest.KMS(t)
	admin := e.Client()
	ctx := testContext(t)
	key := e.Symmetric2
	ks := mustSource(t, e, key.ARN, volume1, nil, awskms.Options{})
	gen := ks.(keysource.Generator)
	dk := newDataKey()
	st := mustWrap(t, ks, dk)

	ops := []struct {
		name string
		do   func() error
	}{
		{"op=wrap", func() error { _, err := ks.Wrap(ctx, dk); return err }},
		{"op=unwrap", func() error { _, err := ks.Unwrap(ctx, st); return err }},
		{"op=generate", func() error { _, _, err := gen.GenerateDataKey(ctx); return err }},
	}

	if _, err := admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(key.ID)}); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		t.Run("state=disabled/"+op.name, func(t *testing.T) {
			wantErr(t, op.do(), keysource.ErrDenied, key.ARN, "disabled", "enable-key")
		})
	}
	t.Run("state=disabled/op=describe", func(t *testing.T) {
		ds, err := ks.(keysource.Describer).Describe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ds.State != string(types.KeyStateDisabled) || ds.Usable || !strings.Contains(ds.Detail, "disabled") {
			t.Errorf("Describe = %+v", ds)
		}
	})

	if _, err := admin.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(key.ID)}); err != nil {
		t.Fatal(err)
	}
	mustUnwrap(t, ks, st, dk)
	del, err := admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(key.ID), PendingWindowInDays: aws.Int32(7)})
	if err != nil {
		t.Fatal(err)
	}
	date := del.DeletionDate.UTC().Format(time.RFC3339)
	if del.DeletionDate.Before(time.Now().Add(6 * 24 * time.Hour)) {
		t.Fatalf("deletion date %s: want about 7 days ahead", date)
	}
	for _, op := range ops {
		t.Run("state=pending-deletion/"+op.name, func(t *testing.T) {
			wantErr(t, op.do(), keysource.ErrDenied, key.ARN, "pending deletion", date, "cancel-key-deletion")
		})
	}
	// Real KMS may answer DisabledException for a key pending deletion;
	// the message must still give the deletion date, not advise
	// enable-key (which fails on such a key).
	t.Run("state=pending-deletion/answer=DisabledException", func(t *testing.T) {
		proxy := kmstest.NewProxy(t, e.Endpoint)
		pks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL, MaxAttempts: 1})
		pst := mustWrap(t, pks, dk)
		if _, err := admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(e.Symmetric.ID), PendingWindowInDays: aws.Int32(7)}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			admin.CancelKeyDeletion(context.Background(), &kms.CancelKeyDeletionInput{KeyId: aws.String(e.Symmetric.ID)})
		})
		proxy.FailNext(1, http.StatusBadRequest, "DisabledException")
		_, err := pks.Unwrap(ctx, pst)
		wantErr(t, err, keysource.ErrDenied, e.Symmetric.ARN, "pending deletion", "cancel-key-deletion")
		if err != nil && strings.Contains(err.Error(), "enable-key --key-id") {
			t.Errorf("a key pending deletion is advised enable-key: %v", err)
		}
	})
	t.Run("state=pending-deletion/op=describe", func(t *testing.T) {
		ds, err := ks.(keysource.Describer).Describe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ds.State != string(types.KeyStatePendingDeletion) || ds.Usable || !ds.Deletes.Equal(*del.DeletionDate) ||
			!strings.Contains(ds.Detail, date) {
			t.Errorf("Describe = %+v, want PendingDeletion on %s", ds, date)
		}
	})
	t.Run("state=pending-deletion/op=open", func(t *testing.T) {
		_, err := newSource(t, e, key.ARN, volume1, nil, awskms.Options{})
		wantErr(t, err, keysource.ErrDenied, key.ARN, "pending deletion", date)
	})
}

// KMS errors the emulator never gives, injected by the proxy: each maps to
// its sentinel and names the cause.
func TestKMSErrors(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	sym := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
	dk := newDataKey()
	st := mustWrap(t, sym, dk)

	tests := []struct {
		code     string
		status   int
		sentinel error
		words    []string
	}{
		{"AccessDeniedException", 400, keysource.ErrDenied, []string{"key policy must allow", "kms:Decrypt", "IAM policy alone is not enough"}},
		{"DisabledException", 400, keysource.ErrDenied, []string{"disabled"}},
		{"NotFoundException", 400, keysource.ErrInvalid, []string{"no such key"}},
		{"InvalidCiphertextException", 400, keysource.ErrInvalid, []string{"does not authenticate"}},
		{"IncorrectKeyException", 400, keysource.ErrInvalid, []string{"another KMS key"}},
		{"InvalidKeyUsageException", 400, keysource.ErrInvalid, []string{"ENCRYPT_DECRYPT"}},
		{"KeyUnavailableException", 400, keysource.ErrUnavailable, []string{"retry later"}},
		{"KMSInternalException", 500, keysource.ErrUnavailable, []string{"after 3 attempts"}},
		{"UnrecognizedClientException", 400, keysource.ErrDenied, []string{"credential"}},
	}
	for _, tt := range tests {
		t.Run("code="+tt.code, func(t *testing.T) {
			proxy.FailNext(3, tt.status, tt.code) // enough for every attempt
			t.Cleanup(func() { proxy.FailNext(0, 0, "") })
			_, err := sym.Unwrap(testContext(t), st)
			wantErr(t, err, tt.sentinel, append(tt.words, "Decrypt", e.Symmetric.ARN, tt.code)...)
		})
	}
}

// Throttling is retried with backoff, bounded by the attempts configured.
func TestThrottling(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	tests := []struct {
		code     string
		failures int
		wantErr  bool
	}{
		{"ThrottlingException", 1, false},
		{"ThrottlingException", 3, false},
		{"LimitExceededException", 2, false},
		{"ThrottlingException", 4, true},
	}
	for _, tt := range tests {
		t.Run("code="+tt.code+",failures="+itoa(tt.failures), func(t *testing.T) {
			c := kmstest.NewCounter()
			ks := mustSource(t, e, e.Symmetric.ARN, volume1, c,
				awskms.Options{Endpoint: proxy.URL, MaxAttempts: 4, BaseDelay: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
			dk := newDataKey()
			st := mustWrap(t, ks, dk)
			c.Reset()
			before := proxy.Failed()
			proxy.FailNext(tt.failures, http.StatusBadRequest, tt.code)
			t.Cleanup(func() { proxy.FailNext(0, 0, "") })

			got, err := ks.Unwrap(testContext(t), st)
			wantAttempts := min(tt.failures+1, 4)
			if tt.wantErr {
				wantErr(t, err, keysource.ErrUnavailable, "throttled", "after 4 attempts", "quota")
			} else if err != nil || string(got) != string(dk) {
				t.Fatalf("Unwrap after %d throttles: %v", tt.failures, err)
			}
			if c.Calls("Decrypt") != 1 || c.Attempts("Decrypt") != wantAttempts {
				t.Errorf("Decrypt calls, attempts = %d, %d; want 1, %d", c.Calls("Decrypt"), c.Attempts("Decrypt"), wantAttempts)
			}
			if n := proxy.Failed() - before; n != min(tt.failures, 4) {
				t.Errorf("throttled answers = %d, want %d", n, min(tt.failures, 4))
			}
		})
	}
}

// An endpoint where nothing listens is ErrUnavailable, promptly, after the
// configured attempts.
func TestUnreachable(t *testing.T) {
	e := fusetest.KMS(t)
	closed := kmstest.ClosedEndpoint(t)
	tests := []struct {
		name     string
		o        awskms.Options
		attempts int
		within   time.Duration
	}{
		{"retry=3x1ms", awskms.Options{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxBackoff: 5 * time.Millisecond}, 3, 5 * time.Second},
		// The SDK's backoff after connection failures waits at most
		// 50 ms · (1+2+4+8+16) = 1.55 s in all.
		{"retry=default", awskms.Options{MaxAttempts: awskms.DefaultMaxAttempts}, awskms.DefaultMaxAttempts, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := kmstest.NewCounter()
			start := time.Now()
			tt.o.Endpoint = closed
			_, err := newSource(t, e, kmstest.Alias, volume1, c, tt.o)
			elapsed := time.Since(start)
			wantErr(t, err, keysource.ErrUnavailable, "cannot reach KMS", "DescribeKey", kmstest.Alias)
			if elapsed > tt.within {
				t.Errorf("gave up after %v, want within %v", elapsed, tt.within)
			}
			if got := c.Attempts("DescribeKey"); got != tt.attempts {
				t.Errorf("attempts = %d, want %d", got, tt.attempts)
			}
		})
	}
	t.Run("ctx=deadline", func(t *testing.T) {
		proxy := kmstest.NewProxy(t, e.Endpoint)
		proxy.SetLatency(kmstest.MaxLatency)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		cfg := e.Config()
		_, err := awskms.Open(ctx, spec(kmstest.Alias), awskms.Options{VolumeID: volume1, Config: &cfg, Endpoint: proxy.URL})
		wantErr(t, err, keysource.ErrUnavailable, "context")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
		}
	})
}

// A spec of another type is refused before any KMS call, even when its
// value would name a KMS key.
func TestOpenSpecType(t *testing.T) {
	e := fusetest.KMS(t)
	for _, typ := range []string{"local", "pkcs11", ""} {
		t.Run("type="+typ, func(t *testing.T) {
			c := kmstest.NewCounter()
			cfg := e.Config()
			_, err := awskms.Open(testContext(t), keysource.Spec{Type: typ, Value: e.Symmetric.ARN},
				awskms.Options{VolumeID: volume1, Config: &cfg, APIOptions: []func(*middleware.Stack) error{c.Register}})
			wantErr(t, err, keysource.ErrInvalid, "not awskms")
			if c.Total() != 0 {
				t.Errorf("KMS calls = %v, want none", c.Snapshot())
			}
		})
	}
}

func TestNoCredentials(t *testing.T) {
	e := fusetest.KMS(t)
	cfg := e.Config()
	cfg.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{}, errors.New("no credentials in this test")
	})
	_, err := newSource(t, e, kmstest.Alias, volume1, nil, awskms.Options{Config: &cfg})
	wantErr(t, err, keysource.ErrDenied, "no usable AWS credentials")
}

// Errors never carry key material: not the data key, not its wrap.
func TestErrorsHoldNoKeys(t *testing.T) {
	e := fusetest.KMS(t)
	ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{})
	other := mustSource(t, e, e.Symmetric.ARN, volume2, nil, awskms.Options{})
	dk := newDataKey()
	st := mustWrap(t, ks, dk)
	_, err := other.Unwrap(testContext(t), st)
	if err == nil {
		t.Fatal("unwrap under another volume succeeded")
	}
	for _, secret := range [][]byte{dk, st.Body} {
		for _, enc := range []string{string(secret), hexString(secret), b64String(secret)} {
			if strings.Contains(err.Error(), enc) {
				t.Fatalf("error holds key material: %v", err)
			}
		}
	}
}

// TestStateProblem follows the KMS developer guide's key states: Enabled
// and Updating keys encrypt and decrypt; the others are refused with the
// sentinel that says whether waiting can help.
func TestStateProblem(t *testing.T) {
	del := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		state types.KeyState
		kind  error // nil: usable
		words []string
	}{
		{types.KeyStateEnabled, nil, nil},
		{types.KeyStateUpdating, nil, nil},
		{types.KeyStateDisabled, keysource.ErrDenied, []string{"enable-key"}},
		{types.KeyStatePendingDeletion, keysource.ErrDenied, []string{"2027-01-02T03:04:05Z", "cancel-key-deletion"}},
		{types.KeyStatePendingImport, keysource.ErrDenied, []string{"PendingImport"}},
		{types.KeyStateUnavailable, keysource.ErrUnavailable, []string{"retry later"}},
		{types.KeyStateCreating, keysource.ErrUnavailable, []string{"retry later"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.state), func(t *testing.T) {
			msg, kind := awskms.StateProblem("arn:k", &types.KeyMetadata{KeyState: tt.state, DeletionDate: &del})
			if kind != tt.kind {
				t.Fatalf("state %s: sentinel %v, want %v (%q)", tt.state, kind, tt.kind, msg)
			}
			for _, w := range tt.words {
				if !strings.Contains(msg, w) {
					t.Errorf("state %s: %q does not say %q", tt.state, msg, w)
				}
			}
		})
	}
}

package awskms_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// quick retries for tests that count attempts
var quick = awskms.Options{BaseDelay: time.Millisecond, MaxBackoff: 2 * time.Millisecond}

func with(o awskms.Options, f func(*awskms.Options)) awskms.Options { f(&o); return o }

// A burst of throttling that spends the SDK's client-wide retry quota must
// not make the next data key fail at its first throttled attempt: the
// pool would turn that into an EIO for a create.
func TestRetryQuotaSpent(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	c := kmstest.NewCounter()
	ks := mustSource(t, e, e.Symmetric.ARN, volume1, c, with(quick, func(o *awskms.Options) { o.Endpoint, o.MaxAttempts = proxy.URL, 2 }))
	gen := ks.(keysource.Generator)
	ctx := testContext(t)
	// The SDK's quota holds 500 tokens and a throttled retry costs 5:
	// 150 calls throttled on both attempts spend it 1.5 times over.
	const burst = 150
	proxy.Inject(kmstest.Fault{Code: "ThrottlingException", N: 2 * burst, Ops: []string{"GenerateDataKey"}})
	for i := range burst {
		if _, _, err := gen.GenerateDataKey(ctx); !errors.Is(err, keysource.ErrUnavailable) {
			t.Fatalf("call %d of the burst: err = %v, want throttled", i, err)
		}
	}
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("after-burst,throttled=1-of-2,call=%d", n), func(t *testing.T) {
			proxy.Inject(kmstest.Fault{Code: "ThrottlingException", N: 1, M: 2, Ops: []string{"GenerateDataKey"}})
			c.Reset()
			if _, _, err := gen.GenerateDataKey(ctx); err != nil {
				t.Fatalf("GenerateDataKey after the burst: %v", err)
			}
			if got := c.Attempts("GenerateDataKey"); got != 2 {
				t.Errorf("attempts = %d, want 2 (one throttled, one retry)", got)
			}
		})
	}
}

// userAgentFeatures returns the SDK feature codes ("E" standard retries,
// "F" adaptive) of a request's User-Agent.
func userAgentFeatures(ua string) []string {
	for _, f := range strings.Fields(ua) {
		if codes, ok := strings.CutPrefix(f, "m/"); ok {
			return strings.Split(codes, ",")
		}
	}
	return nil
}

// The SDK's retry mode comes from AWS_RETRY_MODE or the profile's
// retry_mode unless Options.RetryMode says otherwise; the retryer built is
// the SDK's standard or adaptive one, which the SDK reports in its
// User-Agent.
func TestRetryMode(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		env, profile string
		opt          aws.RetryMode
		feature      string
	}{
		{"", "", "", awsmiddleware.UserAgentFeatureRetryModeStandard},
		{"adaptive", "", "", awsmiddleware.UserAgentFeatureRetryModeAdaptive},
		{"standard", "", "", awsmiddleware.UserAgentFeatureRetryModeStandard},
		{"", "adaptive", "", awsmiddleware.UserAgentFeatureRetryModeAdaptive},
		{"adaptive", "", aws.RetryModeStandard, awsmiddleware.UserAgentFeatureRetryModeStandard},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("env=%s,profile=%s,option=%s", tt.env, tt.profile, tt.opt), func(t *testing.T) {
			e.SetAWSEnv(t, e.Endpoint)
			t.Setenv("AWS_RETRY_MODE", tt.env)
			if tt.profile != "" {
				cfgFile := filepath.Join(t.TempDir(), "config")
				if err := os.WriteFile(cfgFile, []byte("[default]\nretry_mode = "+tt.profile+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				t.Setenv("AWS_CONFIG_FILE", cfgFile)
			}
			var mu sync.Mutex
			var features []string
			peek := func(stack *middleware.Stack) error {
				return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("test.PeekUA",
					func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
						if req, ok := in.Request.(*smithyhttp.Request); ok {
							mu.Lock()
							features = userAgentFeatures(req.Header.Get("User-Agent"))
							mu.Unlock()
						}
						return next.HandleFinalize(ctx, in)
					}), middleware.After)
			}
			_, err := awskms.Open(testContext(t), spec(e.Symmetric.ARN), awskms.Options{VolumeID: volume1, RetryMode: tt.opt, APIOptions: []func(*middleware.Stack) error{peek}})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Contains(features, tt.feature) {
				t.Errorf("User-Agent features %v, want retry mode %q", features, tt.feature)
			}
		})
	}
}

// blockDecrypt is an SDK middleware that holds every Decrypt attempt
// until release is closed, counting those in flight.
type blockDecrypt struct {
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	now     int
	most    int
}

func newBlockDecrypt() *blockDecrypt {
	return &blockDecrypt{entered: make(chan struct{}, 64), release: make(chan struct{})}
}

func (b *blockDecrypt) register(stack *middleware.Stack) error {
	return stack.Finalize.Insert(middleware.FinalizeMiddlewareFunc("test.BlockDecrypt",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			if awsmiddleware.GetOperationName(ctx) != "Decrypt" {
				return next.HandleFinalize(ctx, in)
			}
			b.mu.Lock()
			b.now++
			b.most = max(b.most, b.now)
			b.mu.Unlock()
			defer func() { b.mu.Lock(); b.now--; b.mu.Unlock() }()
			b.entered <- struct{}{}
			select {
			case <-b.release:
			case <-ctx.Done():
				return middleware.FinalizeOutput{}, middleware.Metadata{}, ctx.Err()
			}
			return next.HandleFinalize(ctx, in)
		}), "Retry", middleware.After)
}

func waitEntered(t *testing.T, b *blockDecrypt) {
	t.Helper()
	select {
	case <-b.entered:
	case <-time.After(testTimeout):
		t.Fatal("no Decrypt reached KMS")
	}
}

// MaxConcurrent bounds the requests in flight; a call that waits for a
// slot gives up when its context ends, without sending anything.
func TestMaxConcurrent(t *testing.T) {
	e := fusetest.KMS(t)
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("max-concurrent=%d,calls=6", limit), func(t *testing.T) {
			b := newBlockDecrypt()
			ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{MaxConcurrent: limit, APIOptions: []func(*middleware.Stack) error{b.register}})
			dk := newDataKey()
			st := mustWrap(t, ks, dk)
			errs := make(chan error, 6)
			for range 6 {
				go func() { _, err := ks.Unwrap(testContext(t), st); errs <- err }()
			}
			for range limit {
				waitEntered(t, b)
			}
			// Every slot is taken: one more call waits, and gives up
			// with its context, never reaching KMS.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, err := ks.Unwrap(ctx, st)
			wantErr(t, err, keysource.ErrUnavailable, "context")
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want context.DeadlineExceeded", err)
			}
			close(b.release)
			for range 6 {
				if err := <-errs; err != nil {
					t.Errorf("Unwrap: %v", err)
				}
			}
			if b.most > limit {
				t.Errorf("%d Decrypts in flight at once, want at most %d", b.most, limit)
			}
		})
	}
}

// A request that gets no answer (a half-open connection, a stalled
// proxy) is cut off after RequestTimeout and retried, instead of holding
// its caller and its slot for as long as the connection hangs.
func TestRequestTimeout(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	c := kmstest.NewCounter()
	ks := mustSource(t, e, e.Symmetric.ARN, volume1, c, with(quick, func(o *awskms.Options) {
		o.Endpoint, o.MaxAttempts, o.RequestTimeout = proxy.URL, 2, 100*time.Millisecond
	}))
	dk := newDataKey()
	st := mustWrap(t, ks, dk)
	proxy.SetLatency(kmstest.MaxLatency)
	c.Reset()
	_, err := ks.Unwrap(testContext(t), st)
	wantErr(t, err, keysource.ErrUnavailable, "request timeout", "after 2 attempts")
	if got := c.Attempts("Decrypt"); got != 2 {
		t.Errorf("attempts = %d, want 2", got)
	}
	proxy.SetLatency(0)
	mustUnwrap(t, ks, st, dk)
}

// A key in a custom key store answers KMSInvalidStateException, still
// Enabled, while the store cannot reach its CloudHSM cluster or external
// proxy: kmsfs retries, and when the store stays away reports
// ErrUnavailable naming the store. A key in the default store is not
// retried (the state is the key's own).
func TestCustomKeyStore(t *testing.T) {
	e := fusetest.KMS(t)
	const store = "cks-1234567890abcdef0"
	tests := []struct {
		store    string
		failures int
		attempts int
		sentinel error // nil: success
		words    []string
	}{
		{store, 2, 3, nil, nil},
		{store, 10, 4, keysource.ErrUnavailable, []string{store, "custom key store", "after 4 attempts", "describe-custom-key-stores"}},
		{"", 10, 1, keysource.ErrDenied, []string{"state does not allow"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("store=%s,failures=%d", tt.store, tt.failures), func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			proxy.RewriteDescribeKey(kmstest.KeyMetadataRewrite{CustomKeyStoreID: tt.store})
			c := kmstest.NewCounter()
			ks := mustSource(t, e, e.Symmetric.ARN, volume1, c, with(quick, func(o *awskms.Options) { o.Endpoint, o.MaxAttempts = proxy.URL, 4 }))
			dk := newDataKey()
			st := mustWrap(t, ks, dk)
			c.Reset()
			proxy.Inject(kmstest.Fault{Code: "KMSInvalidStateException", Message: e.Symmetric.ARN + " is unusable because its custom key store is not connected.",
				N: tt.failures, Ops: []string{"Decrypt"}})
			got, err := ks.Unwrap(testContext(t), st)
			if tt.sentinel == nil {
				if err != nil || string(got) != string(dk) {
					t.Fatalf("Unwrap: %v", err)
				}
			} else {
				wantErr(t, err, tt.sentinel, tt.words...)
			}
			if n := c.Attempts("Decrypt"); n != tt.attempts {
				t.Errorf("Decrypt attempts = %d, want %d", n, tt.attempts)
			}
		})
	}
}

// Explaining a state error costs at most one DescribeKey attempt, even
// when KMS keeps failing: the failed call was already retried, and the
// user waits for the error. A failed DescribeKey is not explained by
// another DescribeKey.
func TestStateErrorDescribesOnce(t *testing.T) {
	e := fusetest.KMS(t)
	const store = "cks-1234567890abcdef0"
	tests := []struct {
		op       string
		store    string
		failures []string // operations that keep failing
		attempts map[string]int
		sentinel error
	}{
		{"Decrypt", store, []string{"Decrypt", "DescribeKey"}, map[string]int{"Decrypt": 4, "DescribeKey": 1}, keysource.ErrDenied},
		{"Describe", "", []string{"DescribeKey"}, map[string]int{"DescribeKey": 1}, keysource.ErrDenied},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("op=%s,store=%s", tt.op, tt.store), func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			proxy.RewriteDescribeKey(kmstest.KeyMetadataRewrite{CustomKeyStoreID: tt.store})
			c := kmstest.NewCounter()
			ks := mustSource(t, e, e.Symmetric.ARN, volume1, c, with(quick, func(o *awskms.Options) { o.Endpoint, o.MaxAttempts = proxy.URL, 4 }))
			st := mustWrap(t, ks, newDataKey())
			c.Reset()
			code := "KMSInvalidStateException"
			if tt.op == "Describe" {
				code = "DisabledException"
			}
			proxy.Inject(kmstest.Fault{Code: code, N: 100, Ops: tt.failures})
			var err error
			if tt.op == "Describe" {
				_, err = ks.(keysource.Describer).Describe(testContext(t))
			} else {
				_, err = ks.Unwrap(testContext(t), st)
			}
			wantErr(t, err, tt.sentinel)
			for op, want := range tt.attempts {
				if got := c.Attempts(op); got != want {
					t.Errorf("%s attempts = %d, want %d (all: %v)", op, got, want, c.Snapshot())
				}
			}
		})
	}
}

// Key states the emulator cannot take, reported through DescribeKey
// rewriting: Updating keys are used; Unavailable and pending deletion are
// refused with what to do.
func TestKeyStatesReported(t *testing.T) {
	e := fusetest.KMS(t)
	del := time.Date(2027, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		rw       kmstest.KeyMetadataRewrite
		sentinel error
		words    []string
	}{
		{kmstest.KeyMetadataRewrite{KeyState: "Updating"}, nil, nil},
		{kmstest.KeyMetadataRewrite{KeyState: "Unavailable", CustomKeyStoreID: "cks-0123456789abcdef0"}, keysource.ErrUnavailable, []string{"Unavailable", "retry later"}},
		{kmstest.KeyMetadataRewrite{KeyState: "PendingDeletion", DeletionDate: del}, keysource.ErrDenied, []string{"2027-03-04T05:06:07Z", "cancel-key-deletion"}},
	}
	for _, tt := range tests {
		t.Run("state="+tt.rw.KeyState, func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			proxy.RewriteDescribeKey(tt.rw)
			ks, err := newSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			if tt.sentinel != nil {
				wantErr(t, err, tt.sentinel, tt.words...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			dk := newDataKey()
			mustUnwrap(t, ks, mustWrap(t, ks, dk), dk)
			// A status report agrees with Open: the key is usable.
			if ds, err := ks.(keysource.Describer).Describe(testContext(t)); err != nil || !ds.Usable || ds.State != tt.rw.KeyState {
				t.Errorf("Describe = %+v, %v; want usable in state %s", ds, err, tt.rw.KeyState)
			}
		})
	}
	// A key that went pending deletion after Open may answer
	// DisabledException: the message gives the date, not enable-key.
	t.Run("state=PendingDeletion,answer=DisabledException", func(t *testing.T) {
		proxy := kmstest.NewProxy(t, e.Endpoint)
		ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
		dk := newDataKey()
		st := mustWrap(t, ks, dk)
		proxy.RewriteDescribeKey(kmstest.KeyMetadataRewrite{KeyState: "PendingDeletion", DeletionDate: del})
		proxy.Inject(kmstest.Fault{Code: "DisabledException", N: 1, Ops: []string{"Decrypt"}})
		_, err := ks.Unwrap(testContext(t), st)
		wantErr(t, err, keysource.ErrDenied, "2027-03-04T05:06:07Z", "cancel-key-deletion")
		if err != nil && strings.Contains(err.Error(), "enable-key --key-id") {
			t.Errorf("a key pending deletion is advised enable-key: %v", err)
		}
	})
}

// inRegion returns a key ARN moved to another Region.
func inRegion(arn, from, to string) string { return strings.Replace(arn, ":"+from+":", ":"+to+":", 1) }

// A stanza written through the replica of a multi-Region key in another
// Region opens here (the replicas share ID and key material), and a spec
// naming another Region's replica opens the one in the client's Region. A
// single-Region key of the same ID in another Region, or an mrk key of
// another account, is another key.
func TestMultiRegionKey(t *testing.T) {
	e := fusetest.KMS(t)
	mrk := e.MultiRegion.ARN
	replica := inRegion(mrk, e.Region, "us-east-1")
	ks := mustSource(t, e, mrk, volume1, nil, awskms.Options{})
	dk := newDataKey()
	st := mustWrap(t, ks, dk)
	fromReplica := st
	fromReplica.KeyID = replica

	t.Run("stanza=replica", func(t *testing.T) { mustUnwrap(t, ks, fromReplica, dk) })
	t.Run("spec=replica-arn", func(t *testing.T) {
		rks := mustSource(t, e, replica, volume1, nil, awskms.Options{})
		if rks.KeyID() != mrk {
			t.Errorf("KeyID = %s, want the replica in the client's Region, %s", rks.KeyID(), mrk)
		}
		mustUnwrap(t, rks, fromReplica, dk)
		mustUnwrap(t, rks, st, dk)
	})
	t.Run("stanza=single-region-key-other-region", func(t *testing.T) {
		sks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{})
		sst := mustWrap(t, sks, dk)
		sst.KeyID = inRegion(sst.KeyID, e.Region, "us-east-1")
		_, err := sks.Unwrap(testContext(t), sst)
		wantErr(t, err, keysource.ErrNotMine)
	})
	t.Run("stanza=mrk-other-account", func(t *testing.T) {
		other := fromReplica
		other.KeyID = strings.Replace(replica, ":"+e.Account+":", ":444455556666:", 1)
		_, err := ks.Unwrap(testContext(t), other)
		wantErr(t, err, keysource.ErrNotMine)
	})
}

func TestSameKey(t *testing.T) {
	const (
		mrkA = "arn:aws:kms:eu-west-2:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
		mrkB = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
		key  = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	)
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"same-arn", key, key, true},
		{"mrk-replicas", mrkA, mrkB, true},
		{"single-region-other-region", key, inRegion(key, "eu-west-2", "us-east-1"), false},
		{"mrk-other-account", mrkA, strings.Replace(mrkB, "111122223333", "444455556666", 1), false},
		{"mrk-other-partition", mrkA, strings.Replace(mrkB, "arn:aws:", "arn:aws-cn:", 1), false},
		{"mrk-other-id", mrkA, strings.Replace(mrkB, "mrk-1234", "mrk-9999", 1), false},
		{"alias", "arn:aws:kms:eu-west-2:111122223333:alias/x", "arn:aws:kms:us-east-1:111122223333:alias/x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := awskms.SameKey(tt.a, tt.b); got != tt.want {
				t.Errorf("SameKey(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// AccessDenied for a caller of another account than the key's: both the
// key policy and the caller's IAM policy must allow the operation, and
// the message says so, naming both accounts.
func TestAccessDeniedAcrossAccounts(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		caller string
		words  []string
		not    string
	}{
		{"arn:aws:sts::444455556666:assumed-role/kmsfs-mount/i-0abc", []string{"across accounts", "444455556666", e.Account, "key policy", "IAM policy", "kms:Decrypt"}, ""},
		{"arn:aws:iam::444455556666:user/backup", []string{"across accounts", "444455556666"}, ""},
		{kmstest.DefaultCaller, []string{"key policy must allow", "kms:Decrypt"}, "across accounts"},
	}
	for _, tt := range tests {
		t.Run("caller="+tt.caller, func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			dk := newDataKey()
			st := mustWrap(t, ks, dk)
			proxy.SetPermissions(&kmstest.Permissions{Caller: tt.caller, Allow: []string{"DescribeKey"}})
			_, err := ks.Unwrap(testContext(t), st)
			wantErr(t, err, keysource.ErrDenied, tt.words...)
			if err != nil && tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("err = %v, should not say %q", err, tt.not)
			}
		})
	}
}

// An SSO profile whose session expired (or never started) is told to run
// `aws sso login` for its profile, not left with a bare denial; so are
// expired session credentials that KMS refuses.
func TestExpiredSession(t *testing.T) {
	e := fusetest.KMS(t)
	// No cached token at all: the session expired and its cache was
	// cleared, or `aws sso login` never ran on this host.
	ssoProfiles := map[string]string{
		"legacy": "[profile backup]\nsso_start_url = https://example.awsapps.com/start\nsso_region = " + e.Region +
			"\nsso_account_id = " + e.Account + "\nsso_role_name = kmsfs-mount\nregion = " + e.Region + "\n",
		"sso-session": "[profile backup]\nsso_session = corp\nsso_account_id = " + e.Account +
			"\nsso_role_name = kmsfs-mount\nregion = " + e.Region + "\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\nsso_region = " + e.Region + "\n",
	}
	for _, kind := range []string{"legacy", "sso-session"} {
		t.Run("sso=expired,config="+kind+",profile=backup", func(t *testing.T) {
			e.SetAWSEnv(t, e.Endpoint)
			home := t.TempDir()
			cfgFile := filepath.Join(home, "config")
			if err := os.WriteFile(cfgFile, []byte(ssoProfiles[kind]), 0o600); err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]string{"HOME": home, "AWS_CONFIG_FILE": cfgFile, "AWS_PROFILE": "backup",
				"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""} {
				t.Setenv(k, v)
			}
			_, err := awskms.Open(testContext(t), spec(e.Symmetric.ARN), awskms.Options{VolumeID: volume1})
			wantErr(t, err, keysource.ErrDenied, "SSO session has expired", "aws sso login --profile backup")
		})
	}
	t.Run("answer=ExpiredTokenException", func(t *testing.T) {
		proxy := kmstest.NewProxy(t, e.Endpoint)
		ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
		proxy.Inject(kmstest.Fault{Code: "ExpiredTokenException", N: 1})
		_, _, err := ks.(keysource.Generator).GenerateDataKey(testContext(t))
		wantErr(t, err, keysource.ErrDenied, "expired", "aws sso login")
	})
}

// Grant tokens reach every request that takes them, from Options or from
// KMSFS_AWS_GRANT_TOKENS.
func TestGrantTokens(t *testing.T) {
	e := fusetest.KMS(t)
	tokens := []string{"AQpAM2RhZTk1MGMyNTk2ZmZmMzEyYWVhOWViN2I1MWM0ZmE2", "AQpAYjE3Y2QzNjg1MGZmN2Y1Mjc3YWIwNjQxYzJhZjdiMWIx"}
	lookup := func(v string) func(string) (string, bool) {
		return func(name string) (string, bool) {
			if name == awskms.GrantTokensEnv {
				return v, true
			}
			return "", false
		}
	}
	tests := []struct {
		name string
		key  string
		o    awskms.Options
		ops  []string
	}{
		{"source=options,key=symmetric", e.Symmetric.ARN, awskms.Options{GrantTokens: tokens}, []string{"DescribeKey", "GenerateDataKey", "Encrypt", "Decrypt"}},
		{"source=env,key=symmetric", e.Symmetric.ARN, awskms.Options{LookupEnv: lookup(tokens[0] + " , " + tokens[1])}, []string{"DescribeKey", "GenerateDataKey", "Encrypt", "Decrypt"}},
		{"source=options,key=rsa", e.RSAEncrypt.ARN, awskms.Options{GrantTokens: tokens}, []string{"DescribeKey", "GetPublicKey", "Decrypt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			tt.o.Endpoint = proxy.URL
			ks := mustSource(t, e, tt.key, volume1, nil, tt.o)
			dk := newDataKey()
			if g, ok := ks.(keysource.Generator); ok {
				if _, _, err := g.GenerateDataKey(testContext(t)); err != nil {
					t.Fatal(err)
				}
			}
			mustUnwrap(t, ks, mustWrap(t, ks, dk), dk)
			for _, op := range tt.ops {
				var in struct{ GrantTokens []string }
				if err := json.Unmarshal(proxy.LastRequest(op), &in); err != nil {
					t.Fatalf("%s request: %v", op, err)
				}
				if !slices.Equal(in.GrantTokens, tokens) {
					t.Errorf("%s sent grant tokens %q, want %q", op, in.GrantTokens, tokens)
				}
			}
		})
	}
	t.Run("tokens=11", func(t *testing.T) {
		_, err := newSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{LookupEnv: lookup(strings.Repeat("t,", 10) + "t")})
		wantErr(t, err, keysource.ErrInvalid, "11 grant tokens", awskms.GrantTokensEnv)
	})
	t.Run("answer=InvalidGrantTokenException", func(t *testing.T) {
		proxy := kmstest.NewProxy(t, e.Endpoint)
		ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL, GrantTokens: tokens})
		proxy.Inject(kmstest.Fault{Code: "InvalidGrantTokenException", N: 1})
		_, err := ks.Wrap(testContext(t), newDataKey())
		wantErr(t, err, keysource.ErrDenied, "grant token", "retired or revoked")
	})
}

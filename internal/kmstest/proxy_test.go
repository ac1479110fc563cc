package kmstest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// proxied returns a client of e through a new proxy that never retries,
// so that each call is one request.
func proxied(t *testing.T, e *kmstest.Emulator) (*kmstest.Proxy, *kms.Client) {
	p := kmstest.NewProxy(t, e.Endpoint)
	return p, e.Client(func(o *kms.Options) { o.BaseEndpoint = aws.String(p.URL); o.RetryMaxAttempts = 1 })
}

func describeKey(c *kms.Client, key string) (*types.KeyMetadata, error) {
	out, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(key)})
	if err != nil {
		return nil, err
	}
	return out.KeyMetadata, nil
}

// apiError returns the code, message and HTTP status of err.
func apiError(err error) (code, msg string, status int) {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code, msg = apiErr.ErrorCode(), apiErr.ErrorMessage()
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return code, msg, status
}

// Each injected exception comes with the status and text AWS KMS uses.
func TestProxyErrorAnswers(t *testing.T) {
	e := kmstest.Start(t)
	p, c := proxied(t, e)
	key := e.Symmetric.ARN
	tests := []struct {
		code   string
		status int
		text   string
	}{
		{"ThrottlingException", 400, "Rate exceeded"},
		{"DisabledException", 409, key + " is disabled."},
		{"KMSInvalidStateException", 409, key + " is pending deletion."},
		{"KeyUnavailableException", 500, key + " is unavailable."},
		{"KMSInternalException", 500, ""},
		{"AccessDeniedException", 400, "User: " + kmstest.DefaultCaller + " is not authorized to perform: kms:DescribeKey on resource: " + key},
		{"ExpiredTokenException", 400, "The security token included in the request is expired"},
	}
	for _, tt := range tests {
		t.Run("code="+tt.code, func(t *testing.T) {
			p.Inject(kmstest.Fault{Code: tt.code, N: 1})
			_, err := describeKey(c, key)
			code, msg, status := apiError(err)
			if code != tt.code || status != tt.status || !strings.Contains(msg, tt.text) {
				t.Errorf("answer %s %d %q, want %s %d with %q", code, status, msg, tt.code, tt.status, tt.text)
			}
			if kmstest.ErrorStatus(tt.code) != tt.status {
				t.Errorf("ErrorStatus = %d", kmstest.ErrorStatus(tt.code))
			}
		})
	}
}

// Inject answers N of the next M requests of its operations, spread out
// and the first included, then forwards again.
func TestProxyBurst(t *testing.T) {
	e := kmstest.Start(t)
	p, c := proxied(t, e)
	tests := []struct {
		n, m int
		want string // per request: x failed, . forwarded
	}{
		{1, 2, "x...."},
		{2, 4, "x.x.."},
		{3, 4, "xxx.."},
		{2, 0, "xx..."},
		{1, 3, "x...."},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d,m=%d", tt.n, tt.m), func(t *testing.T) {
			p.Inject(kmstest.Fault{Code: "ThrottlingException", N: tt.n, M: tt.m, Ops: []string{"DescribeKey"}})
			var got strings.Builder
			for range len(tt.want) {
				// Operations outside Ops pass and do not count.
				if _, err := c.ListAliases(context.Background(), &kms.ListAliasesInput{}); err != nil {
					t.Fatalf("ListAliases: %v", err)
				}
				if _, err := describeKey(c, e.Symmetric.ARN); err != nil {
					got.WriteByte('x')
				} else {
					got.WriteByte('.')
				}
			}
			if got.String() != tt.want {
				t.Errorf("requests %s, want %s", got.String(), tt.want)
			}
		})
	}
}

// The permission mode allows the listed operations only, and denies the
// rest with AWS's text naming the caller.
func TestProxyPermissions(t *testing.T) {
	e := kmstest.Start(t)
	p, c := proxied(t, e)
	const caller = "arn:aws:sts::444455556666:assumed-role/r/s"
	p.SetPermissions(&kmstest.Permissions{Caller: caller, Allow: []string{"DescribeKey"}})
	if _, err := describeKey(c, e.Symmetric.ARN); err != nil {
		t.Fatalf("allowed DescribeKey: %v", err)
	}
	_, err := c.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String(e.Symmetric.ARN), Plaintext: []byte("x")})
	code, msg, status := apiError(err)
	if code != "AccessDeniedException" || status != 400 || !strings.Contains(msg, caller) || !strings.Contains(msg, "kms:Encrypt") {
		t.Errorf("Encrypt answered %s %d %q", code, status, msg)
	}
	p.SetPermissions(nil)
	if _, err := c.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String(e.Symmetric.ARN), Plaintext: []byte("x")}); err != nil {
		t.Errorf("Encrypt with permissions cleared: %v", err)
	}
}

// DescribeKey rewriting reports states and stores the emulator lacks.
func TestProxyRewriteDescribeKey(t *testing.T) {
	e := kmstest.Start(t)
	p, c := proxied(t, e)
	del := time.Date(2027, 5, 6, 7, 8, 9, 0, time.UTC)
	p.RewriteDescribeKey(kmstest.KeyMetadataRewrite{KeyState: "PendingDeletion", CustomKeyStoreID: "cks-0123456789abcdef0", DeletionDate: del})
	md, err := describeKey(c, e.Symmetric.ARN)
	if err != nil {
		t.Fatal(err)
	}
	if md.KeyState != types.KeyStatePendingDeletion || md.Enabled || aws.ToString(md.CustomKeyStoreId) != "cks-0123456789abcdef0" ||
		md.DeletionDate == nil || !md.DeletionDate.Equal(del) || aws.ToString(md.Arn) != e.Symmetric.ARN {
		t.Errorf("DescribeKey = %+v", md)
	}
	p.RewriteDescribeKey(kmstest.KeyMetadataRewrite{})
	if md, err = describeKey(c, e.Symmetric.ARN); err != nil || md.KeyState != types.KeyStateEnabled || md.CustomKeyStoreId != nil {
		t.Errorf("after the rewrite ended: %+v, %v", md, err)
	}
}

package kmstest_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/internal/kmstest"
)

func TestStart(t *testing.T) {
	e := kmstest.Start(t)
	ctx := context.Background()
	c := e.Client()

	tests := []struct {
		name  string
		keyID string
		want  kmstest.Key
		usage types.KeyUsageType
		state types.KeyState
	}{
		{"key=alias", kmstest.Alias, e.Symmetric, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=alias-arn", e.AliasARN(), e.Symmetric, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=symmetric2", e.Symmetric2.ID, e.Symmetric2, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=rsa-encrypt", e.RSAEncrypt.ARN, e.RSAEncrypt, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=rsa-sign", e.RSASign.ARN, e.RSASign, types.KeyUsageTypeSignVerify, types.KeyStateEnabled},
		{"key=disabled", e.Disabled.ID, e.Disabled, types.KeyUsageTypeEncryptDecrypt, types.KeyStateDisabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(tt.keyID)})
			if err != nil {
				t.Fatal(err)
			}
			m := out.KeyMetadata
			if aws.ToString(m.Arn) != tt.want.ARN || aws.ToString(m.KeyId) != tt.want.ID {
				t.Errorf("key = %s (%s), want %s (%s)", aws.ToString(m.Arn), aws.ToString(m.KeyId), tt.want.ARN, tt.want.ID)
			}
			if m.KeyUsage != tt.usage || m.KeyState != tt.state {
				t.Errorf("usage, state = %s, %s; want %s, %s", m.KeyUsage, m.KeyState, tt.usage, tt.state)
			}
		})
	}
}

func TestCounter(t *testing.T) {
	e := kmstest.Start(t)
	c := kmstest.NewCounter()
	client := e.Client(func(o *kms.Options) { o.APIOptions = append(o.APIOptions, c.Register) })
	ctx := context.Background()
	for range 3 {
		if _, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(kmstest.Alias)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(kmstest.Alias), KeySpec: types.DataKeySpecAes256}); err != nil {
		t.Fatal(err)
	}
	for op, want := range map[string]int{"DescribeKey": 3, "GenerateDataKey": 1, "Decrypt": 0} {
		if got := c.Calls(op); got != want {
			t.Errorf("Calls(%s) = %d, want %d", op, got, want)
		}
		if got := c.Attempts(op); got != want {
			t.Errorf("Attempts(%s) = %d, want %d", op, got, want)
		}
	}
	if c.Total() != 4 {
		t.Errorf("Total = %d, want 4", c.Total())
	}
	c.Reset()
	if c.Total() != 0 || c.Attempts("DescribeKey") != 0 {
		t.Errorf("after Reset: %v", c.Snapshot())
	}
}

func TestProxy(t *testing.T) {
	e := kmstest.Start(t)
	p := kmstest.NewProxy(t, e.Endpoint)
	c := kmstest.NewCounter()
	client := e.Client(func(o *kms.Options) {
		o.BaseEndpoint = aws.String(p.URL)
		o.APIOptions = append(o.APIOptions, c.Register)
		o.RetryMaxAttempts = 3
	})
	ctx := context.Background()
	describe := func() error {
		_, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(kmstest.Alias)})
		return err
	}

	t.Run("forward", func(t *testing.T) {
		if err := describe(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("latency=20ms", func(t *testing.T) {
		const latency = 20 * time.Millisecond
		p.SetLatency(latency)
		defer p.SetLatency(0)
		start := time.Now()
		if err := describe(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < latency {
			t.Errorf("call took %v, want at least the injected %v", d, latency)
		}
	})
	t.Run("fail=AccessDeniedException", func(t *testing.T) {
		p.FailNext(1, http.StatusBadRequest, "AccessDeniedException")
		var apiErr smithy.APIError
		if err := describe(); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDeniedException" {
			t.Fatalf("err = %v, want AccessDeniedException", err)
		}
		if err := describe(); err != nil {
			t.Fatalf("after the injected failure: %v", err)
		}
	})
	t.Run("fail=ThrottlingException", func(t *testing.T) {
		c.Reset()
		before := p.Failed()
		p.FailNext(2, http.StatusBadRequest, "ThrottlingException")
		if err := describe(); err != nil { // the SDK retries throttling
			t.Fatal(err)
		}
		if p.Failed()-before != 2 || c.Calls("DescribeKey") != 1 || c.Attempts("DescribeKey") != 3 {
			t.Errorf("failed %d, calls %d, attempts %d; want 2, 1, 3", p.Failed()-before, c.Calls("DescribeKey"), c.Attempts("DescribeKey"))
		}
	})
	if p.Requests("DescribeKey") == 0 {
		t.Error("proxy counted no DescribeKey requests")
	}
}

func TestProxyLatencyBounds(t *testing.T) {
	e := kmstest.Start(t)
	p := kmstest.NewProxy(t, e.Endpoint)
	for _, d := range []time.Duration{-1, kmstest.MaxLatency + 1} {
		t.Run("latency="+d.String(), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("SetLatency(%v) did not panic", d)
				}
			}()
			p.SetLatency(d)
		})
	}
}

func TestClosedEndpoint(t *testing.T) {
	u, err := url.Parse(kmstest.ClosedEndpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	if host := u.Hostname(); host != "127.0.0.1" {
		t.Fatalf("host = %s, want 127.0.0.1", host)
	}
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Fatalf("something listens on %s", u.Host)
	}
}

func TestLocalKMSPath(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "local-kms")
	if err := os.WriteFile(bin, nil, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Run("env=set", func(t *testing.T) {
		t.Setenv("KMSFS_LOCAL_KMS", bin)
		if p, err := kmstest.LocalKMSPath(); err != nil || p != bin {
			t.Errorf("LocalKMSPath = %q, %v; want %q", p, err, bin)
		}
	})
	t.Run("env=missing-file", func(t *testing.T) {
		t.Setenv("KMSFS_LOCAL_KMS", bin+".missing")
		if _, err := kmstest.LocalKMSPath(); err == nil {
			t.Error("LocalKMSPath accepted a missing file")
		}
	})
}

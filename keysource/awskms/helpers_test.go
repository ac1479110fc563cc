package awskms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

var (
	volume1 = [awskms.VolumeIDSize]byte{'v', 'o', 'l', 'u', 'm', 'e', '-', '1'}
	volume2 = [awskms.VolumeIDSize]byte{'v', 'o', 'l', 'u', 'm', 'e', '-', '2'}
)

// testTimeout bounds every KMS exchange of a test.
const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// spec returns the awskms key spec of key.
func spec(key string) keysource.Spec { return keysource.Spec{Type: awskms.Type, Value: key} }

// newSource builds a source for key bound to vol, on the emulator unless
// o names a Config or an Endpoint, with 3 quick attempts unless o sets
// MaxAttempts, and counting its calls in c when c is not nil.
func newSource(t testing.TB, e *kmstest.Emulator, key string, vol [awskms.VolumeIDSize]byte, c *kmstest.Counter, o awskms.Options) (keysource.KeySource, error) {
	t.Helper()
	o.VolumeID = vol
	if o.Config == nil {
		cfg := e.Config()
		o.Config = &cfg
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts, o.BaseDelay, o.MaxBackoff = 3, time.Millisecond, 10*time.Millisecond
	}
	if c != nil {
		o.APIOptions = append(o.APIOptions, c.Register)
	}
	return awskms.Open(testContext(t), spec(key), o)
}

func mustSource(t testing.TB, e *kmstest.Emulator, key string, vol [awskms.VolumeIDSize]byte, c *kmstest.Counter, o awskms.Options) keysource.KeySource {
	t.Helper()
	ks, err := newSource(t, e, key, vol, c, o)
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	return ks
}

// newDataKey returns a fresh random data key.
func newDataKey() []byte {
	k := make([]byte, keysource.DataKeySize)
	rand.Read(k) // never fails (crypto/rand)
	return k
}

var errMismatch = errors.New("unwrap returned another data key")

func itoa(n int) string { return strconv.Itoa(n) }

func mustWrap(t testing.TB, ks keysource.KeySource, dk []byte) keysource.Stanza {
	t.Helper()
	st, err := ks.Wrap(testContext(t), dk)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	return st
}

func mustUnwrap(t testing.TB, ks keysource.KeySource, st keysource.Stanza, want []byte) {
	t.Helper()
	got, err := ks.Unwrap(testContext(t), st)
	if err != nil {
		t.Fatalf("Unwrap: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("Unwrap returned another data key")
	}
}

// wantErr fails the test unless err wraps sentinel and its message holds
// every one of words.
func wantErr(t testing.TB, err, sentinel error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("err = %v\nwant it to wrap %v", err, sentinel)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("err = %v\nwant it to mention %q", err, w)
		}
	}
}

func hexString(b []byte) string { return hex.EncodeToString(b) }

func b64String(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

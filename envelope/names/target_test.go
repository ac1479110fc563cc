package names_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

func TestTargetRoundTripEveryLength(t *testing.T) {
	c := newCodec(t, 1)
	for n := 1; n <= names.MaxTargetLen; n++ {
		target := nameOfLen(n, n)
		if n%3 == 0 {
			// Targets hold paths: '/' is allowed in them.
			target = strings.Repeat("../", n/3)
		}
		enc, err := c.EncryptTarget(target)
		if err != nil {
			t.Fatalf("len=%d: %v", n, err)
		}
		got, err := c.DecryptTarget(enc)
		if err != nil || got != target {
			t.Fatalf("len=%d: decrypt %.20q, %v", n, got, err)
		}
	}
}

func TestTargetHidesEquality(t *testing.T) {
	c := newCodec(t, 1)
	a, err := c.EncryptTarget("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.EncryptTarget("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("equal targets stored alike")
	}
	if strings.Contains(a, "passwd") {
		t.Fatal("stored target shows the target")
	}
}

func TestTargetFits(t *testing.T) {
	c := newCodec(t, 1)
	// The longest target whose stored form fits a backing symlink:
	// 16-byte nonce and 16-byte SIV, 4 characters per 3 bytes.
	const longestFitting = names.MaxTargetLen*3/4 - 32
	for _, tc := range []struct {
		n    int
		fits bool
	}{{1, true}, {longestFitting, true}, {longestFitting + 1, false}, {names.MaxTargetLen, false}} {
		t.Run(fmt.Sprintf("len=%d", tc.n), func(t *testing.T) {
			enc, err := c.EncryptTarget(strings.Repeat("t", tc.n))
			if err != nil {
				t.Fatal(err)
			}
			if names.TargetFits(enc) != tc.fits {
				t.Fatalf("stored form of %d bytes: TargetFits %v, want %v", len(enc), !tc.fits, tc.fits)
			}
		})
	}
}

func TestTargetRejectsInvalid(t *testing.T) {
	c := newCodec(t, 1)
	for _, target := range []string{"", "a\x00b", strings.Repeat("t", names.MaxTargetLen+1)} {
		t.Run(fmt.Sprintf("target=%.20q", target), func(t *testing.T) {
			enc, err := c.EncryptTarget(target)
			wantRejected(t, enc, err, names.ErrInvalidName)
		})
	}
}

// TestTamperedTarget edits a stored target as someone with the cipher dir
// could: every bit flipped, cut, grown, or another key's.
func TestTamperedTarget(t *testing.T) {
	c := newCodec(t, 1)
	enc, err := c.EncryptTarget("../shared/report.pdf")
	if err != nil {
		t.Fatal(err)
	}
	raw := mustDecode(t, enc)
	t.Run("flip", func(t *testing.T) {
		for i := range raw {
			for bit := range 8 {
				bad := bytes.Clone(raw)
				bad[i] ^= 1 << bit
				got, err := c.DecryptTarget(base64.RawURLEncoding.EncodeToString(bad))
				wantRejected(t, got, err, names.ErrAuth)
			}
		}
	})
	b64 := base64.RawURLEncoding.EncodeToString
	forged, err := names.EncryptTargetNonce(c, "ok", [16]byte{})
	if err != nil {
		t.Fatal(err)
	}
	withNUL := mustDecode(t, forged)
	for _, tc := range []struct {
		name string
		enc  string
		want error
	}{
		{"cut=1", b64(raw[:len(raw)-1]), names.ErrAuth},
		{"grown=1", b64(append(bytes.Clone(raw), 'x')), names.ErrAuth},
		{"nonce-only", b64(raw[:32]), names.ErrInvalidName},
		{"empty", "", names.ErrInvalidName},
		{"not-base64", "!" + enc[1:], names.ErrInvalidName},
		{"padded", enc + "=", names.ErrInvalidName},
		{"oversized", strings.Repeat("A", 5504), names.ErrInvalidName},
		{"other-key", mustTarget(t, newCodec(t, 2), "../shared/report.pdf"), names.ErrAuth},
		{"entry-name", mustBacking(t, c, strings.Repeat("n", 40)), names.ErrAuth},
		{"nonce-swapped", b64(append(bytes.Clone(withNUL[:16]), raw[16:]...)), names.ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.DecryptTarget(tc.enc)
			wantRejected(t, got, err, tc.want)
		})
	}
}

func mustTarget(t *testing.T, c *names.Codec, target string) string {
	t.Helper()
	enc, err := c.EncryptTarget(target)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func mustBacking(t *testing.T, c *names.Codec, name string) string {
	t.Helper()
	n, err := c.Encrypt(dirID(1), name)
	if err != nil {
		t.Fatal(err)
	}
	return n.Backing
}

func TestTargetRandomFailure(t *testing.T) {
	c := newCodec(t, 1)
	names.SetRand(c, strings.NewReader("short"))
	enc, err := c.EncryptTarget("x")
	if err == nil || enc != "" {
		t.Fatalf("EncryptTarget with a failing random source: %q, %v", enc, err)
	}
}

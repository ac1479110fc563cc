package vaesgcm

import (
	"crypto/cipher"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestSelfTestPasses(t *testing.T) {
	need(t, []byte(selfTestKey))
	if err := SelfTest(); err != nil {
		t.Fatal(err)
	}
}

// skipTag is an implementation whose Open decrypts without checking the
// tag: its Seal is right, so only the self-test's changed vectors catch it.
type skipTag struct{ *gcm }

func (s skipTag) Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error) {
	ct := ciphertext[:len(ciphertext)-TagSize]
	j0, _ := s.preCounter(nonce)
	ret, out := sliceForAppend(dst, len(ct))
	s.crypt(out, ct, &j0)
	return ret, nil
}

// An implementation with one wrong bit in its key schedule or hash-key
// table, as a fault in initKey or in memory would leave it, or one that
// skips the tag check, fails the self-test with an error that names the
// vector. Round-key bytes 16–31 are the second lane only: they change
// every other block of the wide loop and nothing else.
func TestSelfTestCatchesBrokenImplementations(t *testing.T) {
	need(t, []byte(selfTestKey))
	type broken struct {
		name  string
		spoil func(g *gcm) cipher.AEAD
	}
	var cases []broken
	for _, c := range []struct{ round, byte int }{{0, 0}, {1, 5}, {7, 15}, {13, 16}, {14, 31}} {
		cases = append(cases, broken{fmt.Sprintf("round=%d,byte=%d", c.round, c.byte), func(g *gcm) cipher.AEAD {
			g.rk[c.round][c.byte] ^= 0x10
			return g
		}})
	}
	for _, i := range []int{0, 15, 31, 32, 63} {
		cases = append(cases, broken{fmt.Sprintf("htab=%d", i), func(g *gcm) cipher.AEAD {
			g.htab[i][3] ^= 0x01
			return g
		}})
	}
	cases = append(cases, broken{"open=no-tag-check", func(g *gcm) cipher.AEAD { return skipTag{g} }})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Compare(func(key []byte) (cipher.AEAD, bool) {
				a, ok := New(key)
				if !ok {
					return nil, false
				}
				return c.spoil(a.(*gcm)), true
			})
			if !errors.Is(err, ErrSelfTest) || !strings.Contains(err.Error(), "bytes with") {
				t.Fatalf("self-test of a broken implementation: %v, want an ErrSelfTest naming the vector", err)
			}
			t.Log(err)
		})
	}
}

func TestSelfTestRefusesUnsupported(t *testing.T) {
	err := Compare(func([]byte) (cipher.AEAD, bool) { return nil, false })
	if err == nil || errors.Is(err, ErrSelfTest) {
		t.Fatalf("self-test without an implementation: %v", err)
	}
}

// BenchmarkSelfTest is the one-time cost the self-test adds to the first
// codec of a process.
func BenchmarkSelfTest(b *testing.B) {
	need(b, []byte(selfTestKey))
	b.ReportAllocs()
	for b.Loop() {
		if err := SelfTest(); err != nil {
			b.Fatal(err)
		}
	}
}

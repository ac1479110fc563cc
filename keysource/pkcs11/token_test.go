//go:build cgo

package pkcs11_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
	p11 "github.com/miekg/pkcs11"
)

// TestTokenSelection finds the token by the RFC 7512 attributes other
// than its label, alone and together, and refuses what selects none or
// several.
func TestTokenSelection(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	f := infos["main"]
	base := tok.AESSpec()
	path, query, _ := strings.Cut(base, "?")
	withPath := func(attrs string) string {
		obj := path[strings.Index(path, ";object="):]
		return "pkcs11:" + attrs + obj + "?" + query
	}
	esc := url.PathEscape
	tests := []struct {
		name  string
		attrs string
		fail  string // "": opens the key on token main
	}{
		{"by=serial", "serial=" + esc(f.serial), ""},
		{"by=slot-id", fmt.Sprintf("slot-id=%d", f.slot), ""},
		{"by=label+serial", "token=" + esc(tok.Label) + ";serial=" + esc(f.serial), ""},
		{"by=label+model+manufacturer", "token=" + esc(tok.Label) + ";model=" + esc(f.model) + ";manufacturer=" + esc(f.manufacture), ""},
		{"by=model", "model=" + esc(f.model), "tokens match"},
		{"by=label+wrong-serial", "token=" + esc(tok.Label) + ";serial=0000", "no token labelled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tryOpen(t, withPath(tt.attrs), volA, pkcs11.Options{})
			if tt.fail != "" {
				if err == nil {
					s.Close()
					t.Fatal("open succeeded")
				}
				if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), tt.fail) {
					t.Fatalf("open: %v, want ErrInvalid saying %q", err, tt.fail)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer s.Close()
			if want := "pkcs11:token=" + tok.Label + ";object=aes%20key"; s.KeyID() != want {
				t.Errorf("key ID %q, want %q", s.KeyID(), want)
			}
			// It is the very key: a stanza of the label-named Source opens.
			byLabel := open(t, base, volA, pkcs11.Options{})
			dk := newDataKey()
			st, err := byLabel.Wrap(t.Context(), dk)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := s.Unwrap(t.Context(), st); err != nil || !bytes.Equal(got, dk) {
				t.Fatalf("unwrap: %v", err)
			}
		})
	}
}

// TestAlwaysAuthenticate opens a key that wants the PIN before each use:
// kmsfs cannot enter it unattended, and says so at open rather than
// failing every unwrap.
func TestAlwaysAuthenticate(t *testing.T) {
	h := needHSM(t)
	_, err := tryOpen(t, h.Token("main").URI(alwaysAuthLabel), volA, pkcs11.Options{})
	if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), "CKA_ALWAYS_AUTHENTICATE") {
		t.Fatalf("open: %v, want ErrInvalid naming CKA_ALWAYS_AUTHENTICATE", err)
	}
}

// TestModuleTwoPaths reaches one module by its path and through a
// symlink: the Loader loads and initialises it once.
func TestModuleTwoPaths(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	link := filepath.Join(t.TempDir(), "softhsm-link.so")
	if err := os.Symlink(h.Module, link); err != nil {
		t.Fatal(err)
	}
	l := pkcs11.NewLoader()
	for i, spec := range []string{tok.AESSpec(), strings.Replace(tok.AESSpec(), "module-path="+h.Module, "module-path="+link, 1)} {
		if i == 1 && !strings.Contains(spec, link) {
			t.Fatalf("spec %s does not use the link", spec)
		}
		open(t, spec, volA, pkcs11.Options{Loader: l})
		if n := pkcs11.Modules(l); n != 1 {
			t.Fatalf("after %d sources: the loader holds %d modules, want 1", i+1, n)
		}
	}
}

func TestSessionLimit(t *testing.T) {
	const unavailable = ^uint(0)
	tests := []struct {
		max, maxRW uint
		want, got  int
	}{
		{0, 0, 8, 8},                     // effectively infinite
		{unavailable, unavailable, 8, 8}, // not reported
		{16, 16, 8, 8},
		{16, 16, 32, 15}, // YubiHSM 2: one left for the anchor session
		{0, 4, 8, 3},
		{1, 1, 8, 1}, // never below one
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max=%d,max-rw=%d,want=%d", tt.max, tt.maxRW, tt.want), func(t *testing.T) {
			if n := pkcs11.SessionLimit(tt.max, tt.maxRW, tt.want); n != tt.got {
				t.Fatalf("got %d, want %d", n, tt.got)
			}
		})
	}
}

// TestOAEPProbe is the token's answer to RSA-OAEP with SHA-256 at open:
// only a definite refusal of the mechanism or its parameters settles on
// SHA-1; a transient failure must fail the probe (or be retried), never
// quietly downgrade every stanza the key writes.
func TestOAEPProbe(t *testing.T) {
	tests := []struct {
		rv   uint
		hash byte // 0: the probe fails
	}{
		{p11.CKR_OK, 2},
		{p11.CKR_MECHANISM_PARAM_INVALID, 1},
		{p11.CKR_ARGUMENTS_BAD, 1}, // SoftHSM's answer
		{p11.CKR_MECHANISM_INVALID, 1},
		{p11.CKR_DEVICE_ERROR, 0},
		{p11.CKR_SESSION_HANDLE_INVALID, 0},
		{p11.CKR_USER_NOT_LOGGED_IN, 0},
		{p11.CKR_FUNCTION_FAILED, 0},
		{p11.CKR_DEVICE_MEMORY, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rv=%#x", tt.rv), func(t *testing.T) {
			var err error
			if tt.rv != p11.CKR_OK {
				err = p11.Error(tt.rv)
			}
			h, got := pkcs11.OAEPHashFor(err)
			if h != tt.hash || (got == nil) != (tt.hash != 0) {
				t.Fatalf("hash %d, error %v; want hash %d", h, got, tt.hash)
			}
		})
	}
}

// TestKWPVectors checks the Go RFC 5649 code against the RFC's own
// examples (section 6), and that every changed byte fails.
func TestKWPVectors(t *testing.T) {
	kek := unhex(t, "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	tests := []struct{ name, key, wrapped string }{
		{"key=20-bytes", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"key=7-bytes", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, want := unhex(t, tt.key), unhex(t, tt.wrapped)
			got, err := pkcs11.KWPWrap(kek, key)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("wrap: %x, %v; want %x", got, err, want)
			}
			back, err := pkcs11.KWPUnwrap(kek, want)
			if err != nil || !bytes.Equal(back, key) {
				t.Fatalf("unwrap: %x, %v", back, err)
			}
			for i := range want {
				bad := bytes.Clone(want)
				bad[i] ^= 1
				if k, err := pkcs11.KWPUnwrap(kek, bad); err == nil {
					t.Fatalf("flip=%d: unwrapped to %x", i, k)
				}
			}
		})
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

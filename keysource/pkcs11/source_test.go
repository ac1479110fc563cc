//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

func TestRoundTrip(t *testing.T) {
	h := needHSM(t)
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t, kc.spec, volA, kc.opts)
			dk := newDataKey()
			st, err := s.Wrap(t.Context(), dk)
			if err != nil {
				t.Fatalf("wrap: %v", err)
			}
			want := "pkcs11:token=" + h.Token("main").Label + ";object=" + strings.ReplaceAll(labelOf(kc), " ", "%20")
			if st.Type != "pkcs11" || st.KeyID != want || s.KeyID() != want {
				t.Errorf("stanza %s, key ID %q; want pkcs11:%s", st, s.KeyID(), want)
			}
			if len(st.Body) != kc.bodyLen {
				t.Errorf("body of %d bytes, want %d", len(st.Body), kc.bodyLen)
			}
			got, err := s.Unwrap(t.Context(), st)
			if err != nil {
				t.Fatalf("unwrap: %v", err)
			}
			if !bytes.Equal(got, dk) {
				t.Fatal("unwrapped key differs")
			}
			st2, err := s.Wrap(t.Context(), dk)
			if err != nil {
				t.Fatalf("second wrap: %v", err)
			}
			if bytes.Equal(st.Body, st2.Body) != kc.determined {
				t.Errorf("two wraps of one key gave equal bodies: %v, want %v", !kc.determined, kc.determined)
			}
			// A second Source on the same key, opened after the first
			// logged in, reads the first's stanzas.
			s2 := open(t, kc.spec, volA, pkcs11.Options{})
			if got, err := s2.Unwrap(t.Context(), st2); err != nil || !bytes.Equal(got, dk) {
				t.Fatalf("unwrap by a second source: %v", err)
			}
		})
	}
}

func labelOf(kc keyCase) string {
	if strings.HasPrefix(kc.name, "rsa") {
		return rsaLabel
	}
	return aesLabel
}

func TestWrapRefusesShortKey(t *testing.T) {
	h := needHSM(t)
	s := open(t, h.Token("main").AESSpec(), volA, pkcs11.Options{})
	for _, n := range []int{0, 16, 31, 33} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			if _, err := s.Wrap(t.Context(), make([]byte, n)); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("wrap of %d bytes: %v, want ErrInvalid", n, err)
			}
		})
	}
}

func TestUnwrapWrongVolume(t *testing.T) {
	h := needHSM(t)
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			t.Parallel()
			a := open(t, kc.spec, volA, kc.opts)
			b := open(t, kc.spec, volB, kc.opts)
			st, err := a.Wrap(t.Context(), newDataKey())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Unwrap(t.Context(), st); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("unwrap under another volume: %v, want ErrInvalid", err)
			}
		})
	}
}

func TestUnwrapNotMine(t *testing.T) {
	h := needHSM(t)
	main, other := h.Token("main"), h.Token("other")
	aes := open(t, main.AESSpec(), volA, pkcs11.Options{})
	rsa := open(t, main.RSASpec(), volA, pkcs11.Options{})
	otherAES := open(t, other.AESSpec(), volA, pkcs11.Options{})
	ctx := t.Context()
	aesSt, err := aes.Wrap(ctx, newDataKey())
	if err != nil {
		t.Fatal(err)
	}
	rsaSt, err := rsa.Wrap(ctx, newDataKey())
	if err != nil {
		t.Fatal(err)
	}
	retype := func(st keysource.Stanza, typ, keyID string) keysource.Stanza {
		if typ != "" {
			st.Type = typ
		}
		if keyID != "" {
			st.KeyID = keyID
		}
		return st
	}
	tests := []struct {
		name string
		src  *pkcs11.Source
		st   keysource.Stanza
	}{
		{"stanza=awskms", aes, retype(aesSt, "awskms", "")},
		{"stanza=rsa,source=aes", aes, rsaSt},
		{"stanza=aes,source=rsa", rsa, aesSt},
		{"stanza=main-token,source=other-token", otherAES, aesSt},
		{"stanza=other-token,key-id=unparsable", otherAES, retype(aesSt, "", "pkcs11:nonsense")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.src.Unwrap(ctx, tt.st); !errors.Is(err, keysource.ErrNotMine) {
				t.Fatalf("unwrap: %v, want ErrNotMine", err)
			}
		})
	}
	t.Run("stanza=reordered-key-id", func(t *testing.T) {
		// The same key written another way is still this key.
		st := retype(aesSt, "", "pkcs11:object="+url.PathEscape(aesLabel)+";token="+main.Label)
		if _, err := aes.Unwrap(ctx, st); err != nil {
			t.Fatalf("unwrap: %v", err)
		}
	})
}

// TestKeyIDWithID adds id= to the URI of a key whose stanzas were written
// without it, as the error for two keys of one label advises: the
// stanzas still open both ways, since the fingerprint, not the name,
// says whose they are.
func TestKeyIDWithID(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	for _, tt := range []struct{ name, object, id string }{
		{"key=aes", aesLabel, hsmtest.AESID},
		{"key=rsa", rsaLabel, hsmtest.RSAID},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := strings.Replace(tok.URI(tt.object), "?", ";id="+pctAll(tt.id)+"?", 1)
			s := open(t, spec, volA, pkcs11.Options{})
			if !strings.HasSuffix(s.KeyID(), ";id="+pctAll(tt.id)) {
				t.Errorf("key ID %q does not end in the id", s.KeyID())
			}
			plain := open(t, tok.URI(tt.object), volA, pkcs11.Options{})
			for _, dir := range []struct {
				name     string
				from, to *pkcs11.Source
			}{{"with-id-to-without", s, plain}, {"without-id-to-with", plain, s}} {
				dk := newDataKey()
				st, err := dir.from.Wrap(t.Context(), dk)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := dir.to.Unwrap(t.Context(), st); err != nil || !bytes.Equal(got, dk) {
					t.Errorf("%s: unwrap: %v", dir.name, err)
				}
			}
		})
	}
}

func pctAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// TestUnwrapTampered flips every bit… of every byte once, cuts and
// extends the body: every change must fail as ErrInvalid, never return a
// key.
func TestUnwrapTampered(t *testing.T) {
	h := needHSM(t)
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t, kc.spec, volA, kc.opts)
			st, err := s.Wrap(t.Context(), newDataKey())
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, body []byte) {
				t.Helper()
				bad := st
				bad.Body = body
				if k, err := s.Unwrap(t.Context(), bad); !errors.Is(err, keysource.ErrInvalid) {
					t.Errorf("%s: unwrap gave key %v, err %v; want ErrInvalid", what, k != nil, err)
				}
			}
			for i := range st.Body {
				b := bytes.Clone(st.Body)
				b[i] ^= 0x01
				check(fmt.Sprintf("flip=%d", i), b)
			}
			for _, n := range []int{0, 1, 2, 3, len(st.Body) - 1} {
				check(fmt.Sprintf("cut=%d", n), bytes.Clone(st.Body[:n]))
			}
			check("extend=1", append(bytes.Clone(st.Body), 0))
			// The stanza is still good.
			if _, err := s.Unwrap(t.Context(), st); err != nil {
				t.Fatalf("unwrap of the untouched stanza: %v", err)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	missing := filepath.Join(t.TempDir(), "no-such-module.so")
	tests := []struct {
		name  string
		spec  string
		env   map[string]string
		is    error
		wants []string
	}{
		{"token=unknown", strings.Replace(tok.AESSpec(), tok.Label, "no-such-token", 1), nil,
			keysource.ErrInvalid, []string{`"no-such-token"`, tok.Label, h.Token("other").Label}},
		{"object=unknown", tok.URI("no such key"), nil, keysource.ErrInvalid, []string{`"no such key"`, tok.Label}},
		{"id=unknown", strings.Replace(tok.AESSpec(), "?", ";id=%FF?", 1), nil, keysource.ErrInvalid, []string{"ff", `"aes key"`}},
		{"type=secret-key,object=rsa", strings.Replace(tok.RSASpec(), "?", ";type=secret-key?", 1), nil, keysource.ErrInvalid, []string{rsaLabel}},
		{"module=missing", strings.Replace(tok.AESSpec(), h.Module, missing, 1), nil, keysource.ErrUnavailable, []string{missing}},
		{"module=not-pkcs11", strings.Replace(tok.AESSpec(), h.Module, "/etc/hostname", 1), nil, keysource.ErrUnavailable, []string{"/etc/hostname", "not a PKCS#11 library"}},
		{"module=none", strings.Replace(tok.AESSpec(), "module-path="+h.Module+"&", "", 1), nil, keysource.ErrInvalid, []string{"KMSFS_PKCS11_MODULE"}},
		{"pin-value", tok.AESSpec() + "&pin-value=" + tok.PIN, nil, keysource.ErrInvalid, []string{"pin-value is refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tryOpen(t, tt.spec, volA, pkcs11.Options{LookupEnv: env(tt.env)})
			if err == nil {
				s.Close()
				t.Fatal("open succeeded")
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("error %v, want %v", err, tt.is)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if strings.Contains(err.Error(), tok.PIN) {
				t.Errorf("error %q holds the PIN", err)
			}
		})
	}
	t.Run("module=from-env", func(t *testing.T) {
		spec := strings.Replace(tok.AESSpec(), "module-path="+h.Module+"&", "", 1)
		s, err := tryOpen(t, spec, volA, pkcs11.Options{LookupEnv: env(map[string]string{pkcs11.EnvModule: h.Module})})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
}

// TestPIN runs on the token "pin", which no other test logs in to, in
// order: each Source is closed before the next opens, which ends the
// login, so every case meets a token that is logged out.
func TestPIN(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("pin")
	dir := t.TempDir()
	writePIN := func(name, pin string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pin), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const wrongPIN = "wrong-pin-3141592653"
	wrongFile := writePIN("wrong.pin", wrongPIN)
	emptyFile := writePIN("empty.pin", "")
	newlineFile := writePIN("newline.pin", tok.PIN+"\n")
	base := strings.Split(tok.AESSpec(), "&pin-source=")[0]
	tests := []struct {
		name   string
		source string // pin-source value, "" for none
		env    map[string]string
		is     error  // nil: Open succeeds
		wants  string // in the error
	}{
		{"source=file,pin=wrong", "file:" + wrongFile, nil, keysource.ErrDenied, "refused the PIN from file " + wrongFile},
		{"source=file,pin=right", "file:" + tok.PINFile, nil, nil, ""},
		{"source=file-url,pin=right+newline", "file://" + newlineFile, nil, nil, ""},
		{"source=env,pin=wrong", "env:MY_PIN", map[string]string{"MY_PIN": wrongPIN}, keysource.ErrDenied, "refused the PIN from environment variable MY_PIN"},
		{"source=env,pin=right", "env:MY_PIN", map[string]string{"MY_PIN": tok.PIN}, nil, ""},
		{"source=default-env,pin=wrong", "", map[string]string{pkcs11.EnvPIN: wrongPIN}, keysource.ErrDenied, "refused the PIN from environment variable " + pkcs11.EnvPIN},
		{"source=default-env,pin=right", "", map[string]string{pkcs11.EnvPIN: tok.PIN}, nil, ""},
		{"source=file,pin=wrong-after-logout", "file:" + wrongFile, nil, keysource.ErrDenied, "refused the PIN"},
		{"source=env,pin=unset", "env:MY_PIN", nil, keysource.ErrInvalid, "MY_PIN is not set"},
		{"source=default-env,pin=unset", "", nil, keysource.ErrInvalid, pkcs11.EnvPIN + " is not set"},
		{"source=file,pin=empty", "file:" + emptyFile, nil, keysource.ErrInvalid, "empty"},
		{"source=file,pin=missing", "file:" + filepath.Join(dir, "absent.pin"), nil, nil, filepath.Join(dir, "absent.pin")},
		{"source=file-url,pin=wrong", "file://localhost" + wrongFile, nil, keysource.ErrDenied, "refused the PIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := base
			if tt.source != "" {
				spec += "&pin-source=" + tt.source
			}
			s, err := tryOpen(t, spec, volA, pkcs11.Options{LookupEnv: env(tt.env)})
			if tt.wants == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				if _, err := s.Wrap(t.Context(), newDataKey()); err != nil {
					t.Errorf("wrap: %v", err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("open succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.wants) {
				t.Errorf("error %q does not say %q", err, tt.wants)
			}
			for _, pin := range []string{wrongPIN, tok.PIN} {
				if strings.Contains(err.Error(), pin) {
					t.Errorf("error %q holds a PIN", err)
				}
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	h := needHSM(t)
	const goroutines, rounds = 64, 4
	for _, kc := range keyCases(h) {
		t.Run(fmt.Sprintf("key=%s,goroutines=%d,sessions=4", kc.name, goroutines), func(t *testing.T) {
			o := kc.opts
			o.Sessions = 4
			s := open(t, kc.spec, volA, o)
			var wg sync.WaitGroup
			errs := make(chan error, goroutines)
			for range goroutines {
				wg.Go(func() {
					for range rounds {
						dk := newDataKey()
						st, err := s.Wrap(t.Context(), dk)
						if err != nil {
							errs <- fmt.Errorf("wrap: %w", err)
							return
						}
						got, err := s.Unwrap(t.Context(), st)
						if err != nil {
							errs <- fmt.Errorf("unwrap: %w", err)
							return
						}
						if !bytes.Equal(got, dk) {
							errs <- errors.New("unwrapped key differs")
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			s := open(t, kc.spec, volA, kc.opts)
			st, err := s.Describe(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !st.Usable || st.State != "Present" || st.KeyID != s.KeyID() {
				t.Errorf("state %+v, want usable and present", st)
			}
			wants := map[string][]string{
				"aes-gcm":  {"AES-256", "AES-GCM"},
				"aes-kwp":  {"AES-256", "RFC 5649"},
				"rsa-oaep": {"RSA-2048", "SHA-1"},
			}[kc.name]
			for _, w := range append(wants, tok.Label) {
				if !strings.Contains(st.Detail, w) {
					t.Errorf("detail %q does not say %q", st.Detail, w)
				}
			}
		})
	}
}

func TestClose(t *testing.T) {
	h := needHSM(t)
	tok := h.Token("main")
	a, err := tryOpen(t, tok.AESSpec(), volA, pkcs11.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := open(t, tok.AESSpec(), volA, pkcs11.Options{})
	st, err := a.Wrap(t.Context(), newDataKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := a.Wrap(t.Context(), newDataKey()); err == nil {
		t.Error("wrap after close succeeded")
	}
	if _, err := a.Unwrap(t.Context(), st); err == nil {
		t.Error("unwrap after close succeeded")
	}
	if _, err := a.Describe(t.Context()); err == nil {
		t.Error("describe after close succeeded")
	}
	// The other Source on the same token and module goes on working.
	if _, err := b.Unwrap(t.Context(), st); err != nil {
		t.Fatalf("unwrap by the remaining source: %v", err)
	}
}

// TestOpenLoader checks who holds the module. Without Options.Loader a
// Source gets a Loader of its own and releases the module when it
// closes; with one, Sources share its module until the last one closes.
func TestOpenLoader(t *testing.T) {
	h := needHSM(t)
	spec, err := keysource.ParseSpec(h.Token("main").AESSpec())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		loader  *pkcs11.Loader // Options.Loader
		sources int
	}{
		{name: "loader=own,sources=1", sources: 1},
		{name: "loader=given,sources=1", loader: pkcs11.NewLoader(), sources: 1},
		{name: "loader=given,sources=2", loader: pkcs11.NewLoader(), sources: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := pkcs11.Options{VolumeID: volA, Loader: tt.loader, LookupEnv: noEnv}
			srcs := make([]*pkcs11.Source, tt.sources)
			for i := range srcs {
				s, err := pkcs11.Open(t.Context(), spec, o)
				if err != nil {
					t.Fatalf("open source %d: %v", i, err)
				}
				t.Cleanup(func() { s.Close() })
				srcs[i] = s
			}
			l := pkcs11.LoaderOf(srcs[0])
			switch {
			case tt.loader == nil && (l == nil || l == loader):
				t.Fatal("a Source opened without a Loader has no Loader of its own")
			case tt.loader != nil && l != tt.loader:
				t.Fatal("the Source was not opened through the given Loader")
			}
			if n := pkcs11.Modules(l); n != 1 {
				t.Fatalf("loader holds %d modules after open, want 1", n)
			}
			st, err := srcs[0].Wrap(t.Context(), newDataKey())
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range srcs {
				if _, err := s.Unwrap(t.Context(), st); err != nil {
					t.Fatalf("source %d: unwrap: %v", i, err)
				}
				if err := s.Close(); err != nil {
					t.Fatalf("source %d: close: %v", i, err)
				}
				want := 1 // the module stays loaded while a Source uses it
				if i == len(srcs)-1 {
					want = 0
				}
				if n := pkcs11.Modules(l); n != want {
					t.Fatalf("loader holds %d modules after %d of %d sources closed, want %d", n, i+1, len(srcs), want)
				}
			}
		})
	}
}

func TestContextDone(t *testing.T) {
	h := needHSM(t)
	s := open(t, h.Token("main").AESSpec(), volA, pkcs11.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Wrap(ctx, newDataKey()); !errors.Is(err, context.Canceled) {
		t.Errorf("wrap: %v, want context.Canceled", err)
	}
	if _, err := s.Unwrap(ctx, keysource.Stanza{Type: "pkcs11", KeyID: s.KeyID(), Body: append([]byte{1, 1}, make([]byte, 60)...)}); !errors.Is(err, context.Canceled) {
		t.Errorf("unwrap: %v, want context.Canceled", err)
	}
}

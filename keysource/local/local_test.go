package local_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
)

var (
	volA = [16]byte{'v', 'o', 'l', 'A'}
	volB = [16]byte{'v', 'o', 'l', 'B'}
)

// cheapKDF returns scrypt parameters cheap enough for tests.
func cheapKDF(t testing.TB) local.KDFParams {
	t.Helper()
	p, err := local.NewKDFParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	p.LogN = 10
	return p
}

// openKeyFile opens the key file at path as the spec "local:PATH" does.
func openKeyFile(path string, o local.Options) (*local.Source, error) {
	return local.Open(context.Background(), keysource.Spec{Type: local.Type, Value: path}, o)
}

// openPassphrase opens the passphrase form, the spec "local:passphrase".
func openPassphrase(o local.Options) (*local.Source, error) {
	return local.Open(context.Background(), keysource.Spec{Type: local.Type, Value: "passphrase"}, o)
}

func noEnv(string) (string, bool) { return "", false }

func env(v string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		if k == local.PassphraseEnv {
			return v, true
		}
		return "", false
	}
}

func writeFile(t testing.TB, data []byte, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask may have narrowed it
		t.Fatal(err)
	}
	return path
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func keyFileSource(t testing.TB, vol [16]byte) (*local.Source, string) {
	t.Helper()
	path := writeFile(t, randomBytes(t, 32), 0o600)
	s, err := openKeyFile(path, local.Options{VolumeID: vol})
	if err != nil {
		t.Fatal(err)
	}
	return s, path
}

func TestRoundTrip(t *testing.T) {
	kdf := cheapKDF(t)
	passFile := writeFile(t, []byte("correct horse\n"), 0o600)
	for _, c := range []struct {
		name, prefix string
		open         func(vol [16]byte) (*local.Source, error)
	}{
		{"form=key-file", "file:", func(vol [16]byte) (*local.Source, error) {
			path := writeFile(t, randomBytes(t, 32), 0o600)
			return local.Open(context.Background(), keysource.Spec{Type: "local", Value: path}, local.Options{VolumeID: vol})
		}},
		{"form=passphrase,from=env", "passphrase:", func(vol [16]byte) (*local.Source, error) {
			return local.Open(context.Background(), keysource.Spec{Type: "local", Value: "passphrase"},
				local.Options{VolumeID: vol, KDF: kdf, AllowWeakKDF: true, LookupEnv: env("correct horse")})
		}},
		{"form=passphrase,from=file", "passphrase:", func(vol [16]byte) (*local.Source, error) {
			return openPassphrase(local.Options{VolumeID: vol, KDF: kdf, AllowWeakKDF: true, PassphraseFile: passFile, LookupEnv: noEnv})
		}},
		{"form=passphrase,from=prompt", "passphrase:", func(vol [16]byte) (*local.Source, error) {
			return openPassphrase(local.Options{VolumeID: vol, KDF: kdf, AllowWeakKDF: true, LookupEnv: noEnv,
				Prompt: func() ([]byte, error) { return []byte("correct horse"), nil }})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := c.open(volA)
			if err != nil {
				t.Fatal(err)
			}
			if s.Type() != "local" || !strings.HasPrefix(s.KeyID(), c.prefix) || len(s.KeyID()) != len(c.prefix)+16 {
				t.Fatalf("type %q, key ID %q", s.Type(), s.KeyID())
			}
			ctx := context.Background()
			for _, n := range []int{0, 1, 31, 33} {
				if _, err := s.Wrap(ctx, make([]byte, n)); !errors.Is(err, keysource.ErrInvalid) {
					t.Fatalf("wrap of %d bytes: %v, want ErrInvalid", n, err)
				}
			}
			dk := randomBytes(t, keysource.DataKeySize)
			st, err := s.Wrap(ctx, dk)
			if err != nil {
				t.Fatal(err)
			}
			if st.Type != "local" || st.KeyID != s.KeyID() || len(st.Body) != 60 {
				t.Fatalf("stanza %v with %d-byte body", st, len(st.Body))
			}
			got, err := s.Unwrap(ctx, st)
			if err != nil || !bytes.Equal(got, dk) {
				t.Fatalf("unwrap: %v (key equal: %v)", err, bytes.Equal(got, dk))
			}
			if st2, _ := s.Wrap(ctx, dk); bytes.Equal(st2.Body, st.Body) {
				t.Fatal("two wraps of one key gave the same body")
			}

			// The same key bound to another volume refuses the stanza.
			other, err := c.open(volB)
			if err != nil {
				t.Fatal(err)
			}
			if c.prefix == "passphrase:" { // same passphrase, same salt: same key
				if other.KeyID() != s.KeyID() {
					t.Fatal("same passphrase and KDF parameters gave another key ID")
				}
				_, err := other.Unwrap(ctx, st)
				if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), "another volume") {
					t.Fatalf("wrong volume: %v, want ErrInvalid naming another volume", err)
				}
			} else if _, err := other.Unwrap(ctx, st); !errors.Is(err, keysource.ErrNotMine) {
				t.Fatalf("another key file: %v, want ErrNotMine", err)
			}
		})
	}
}

func TestWrongVolume(t *testing.T) {
	s, path := keyFileSource(t, volA)
	ctx := context.Background()
	st, err := s.Wrap(ctx, randomBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	other, err := openKeyFile(path, local.Options{VolumeID: volB})
	if err != nil {
		t.Fatal(err)
	}
	if other.KeyID() != s.KeyID() {
		t.Fatal("one key file, two key IDs")
	}
	_, err = other.Unwrap(ctx, st)
	if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), "does not open under this key and volume") {
		t.Fatalf("got %v, want ErrInvalid saying the stanza does not open", err)
	}
}

func TestUnwrapRefuses(t *testing.T) {
	s, _ := keyFileSource(t, volA)
	other, _ := keyFileSource(t, volA)
	kdf := cheapKDF(t)
	pass, err := openPassphrase(local.Options{VolumeID: volA, KDF: kdf, AllowWeakKDF: true, LookupEnv: env("one")})
	if err != nil {
		t.Fatal(err)
	}
	wrongPass, err := openPassphrase(local.Options{VolumeID: volA, KDF: kdf, AllowWeakKDF: true, LookupEnv: env("two")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dk := randomBytes(t, 32)
	st, err := s.Wrap(ctx, dk)
	if err != nil {
		t.Fatal(err)
	}
	pst, err := pass.Wrap(ctx, dk)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*keysource.Stanza)) keysource.Stanza {
		c := st
		c.Body = bytes.Clone(st.Body)
		f(&c)
		return c
	}
	for _, c := range []struct {
		name   string
		src    *local.Source
		st     keysource.Stanza
		want   error
		saying string
	}{
		{"type=awskms", s, mod(func(c *keysource.Stanza) { c.Type = "awskms" }), keysource.ErrNotMine, "not a local stanza"},
		{"key=other-file", other, st, keysource.ErrNotMine, "another key file"},
		{"key=passphrase,stanza=file", pass, st, keysource.ErrNotMine, "a key file, not a passphrase"},
		{"key=file,stanza=passphrase", s, pst, keysource.ErrNotMine, "a passphrase, not a key file"},
		{"key=wrong-passphrase", wrongPass, pst, keysource.ErrNotMine, "wrong passphrase?"},
		{"body=empty", s, mod(func(c *keysource.Stanza) { c.Body = nil }), keysource.ErrInvalid, "body is 0 bytes"},
		{"body=short", s, mod(func(c *keysource.Stanza) { c.Body = c.Body[:59] }), keysource.ErrInvalid, "body is 59 bytes"},
		{"body=long", s, mod(func(c *keysource.Stanza) { c.Body = append(c.Body, 0) }), keysource.ErrInvalid, "body is 61 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.src.Unwrap(ctx, c.st)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.saying) {
				t.Fatalf("got %v, want %v saying %q", err, c.want, c.saying)
			}
		})
	}
	// Every flipped bit of the body fails authentication.
	for i := range st.Body {
		for _, bit := range []byte{0x01, 0x80} {
			c := mod(func(c *keysource.Stanza) { c.Body[i] ^= bit })
			if _, err := s.Unwrap(ctx, c); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("byte=%d,bit=%#x: %v, want ErrInvalid", i, bit, err)
			}
		}
	}
}

func TestKeyFileSizes(t *testing.T) {
	hexKey := []byte(hex.EncodeToString(randomBytes(t, 32)))
	for _, c := range []struct {
		name   string
		data   []byte
		saying string
	}{
		{"size=0", nil, "holds 0 bytes"},
		{"size=1", []byte{7}, "holds 1 bytes"},
		{"size=31", randomBytes(t, 31), "holds 31 bytes"},
		{"size=33", randomBytes(t, 33), "holds 33 bytes"},
		{"size=33,newline", append(append([]byte{0xff}, randomBytes(t, 31)...), '\n'), "ends in a newline"},
		{"size=64,hex", hexKey, "looks like text"},
		{"size=65,hex", append(bytes.Clone(hexKey), '\n'), "holds 65 bytes"},
		{"size=4096", randomBytes(t, 4096), "holds 4096 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, c.data, 0o600)
			_, err := openKeyFile(path, local.Options{VolumeID: volA})
			if !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) || !strings.Contains(msg, c.saying) || !strings.Contains(msg, "head -c 32 /dev/urandom") {
				t.Fatalf("error %q should name %s and say %q", msg, path, c.saying)
			}
			if len(c.data) >= 8 && (strings.Contains(msg, string(c.data[:8])) || strings.Contains(msg, hex.EncodeToString(c.data[:8]))) {
				t.Fatalf("error %q quotes the key file", msg)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope")
		if _, err := openKeyFile(path, local.Options{}); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Fatalf("got %v, want a not-exist error naming the path", err)
		}
	})
}

func TestKeyFileMode(t *testing.T) {
	for _, c := range []struct {
		mode    os.FileMode
		refused bool
		warns   bool
	}{
		{0o400, false, false},
		{0o600, false, false},
		{0o640, false, true},
		{0o644, false, true},
		{0o660, false, true},
		{0o602, true, false},
		{0o666, true, false},
	} {
		t.Run(fmt.Sprintf("mode=%04o", c.mode), func(t *testing.T) {
			path := writeFile(t, randomBytes(t, 32), c.mode)
			s, err := openKeyFile(path, local.Options{VolumeID: volA})
			if c.refused {
				if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), "writable by every user") {
					t.Fatalf("got %v, want a refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := s.Describe(context.Background())
			if err != nil || !st.Usable || st.KeyID != s.KeyID() {
				t.Fatalf("Describe: %+v, %v", st, err)
			}
			if warns := strings.Contains(st.Detail, "chmod 600"); warns != c.warns {
				t.Fatalf("Detail %q: warning %v, want %v", st.Detail, warns, c.warns)
			}
		})
	}
}

func TestPassphraseSources(t *testing.T) {
	kdf := cheapKDF(t)
	ref, err := openPassphrase(local.Options{KDF: kdf, AllowWeakKDF: true, LookupEnv: env("s3cret")})
	if err != nil {
		t.Fatal(err)
	}
	prompted := func(p string, err error) func() ([]byte, error) {
		return func() ([]byte, error) { return []byte(p), err }
	}
	errPrompt := errors.New("no terminal")
	for _, c := range []struct {
		name   string
		o      local.Options
		same   bool   // same key as passphrase "s3cret"
		fail   error  // expected error, if any
		saying string // in the error
	}{
		{name: "env", o: local.Options{LookupEnv: env("s3cret")}, same: true},
		{name: "env=empty", o: local.Options{LookupEnv: env("")}, fail: keysource.ErrInvalid, saying: "set but empty"},
		{name: "file,newline=lf", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret\n"), 0o600)}, same: true},
		{name: "file,newline=crlf", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret\r\n"), 0o600)}, same: true},
		{name: "file,newline=none", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret"), 0o600)}, same: true},
		{name: "file,newline=two", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret\n\n"), 0o600)}},
		{name: "file-beats-env", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret"), 0o600), LookupEnv: env("other")}, same: true},
		{name: "env-beats-prompt", o: local.Options{LookupEnv: env("s3cret"), Prompt: prompted("other", nil)}, same: true},
		{name: "prompt", o: local.Options{LookupEnv: noEnv, Prompt: prompted("s3cret", nil)}, same: true},
		{name: "prompt=other", o: local.Options{LookupEnv: noEnv, Prompt: prompted("other", nil)}},
		{name: "prompt=error", o: local.Options{LookupEnv: noEnv, Prompt: prompted("", errPrompt)}, fail: errPrompt, saying: "prompt"},
		{name: "prompt=empty", o: local.Options{LookupEnv: noEnv, Prompt: prompted("", nil)}, fail: keysource.ErrInvalid, saying: "empty"},
		{name: "file=empty", o: local.Options{PassphraseFile: writeFile(t, []byte("\n"), 0o600)}, fail: keysource.ErrInvalid, saying: "is empty"},
		{name: "file=world-writable", o: local.Options{PassphraseFile: writeFile(t, []byte("s3cret"), 0o666)}, fail: keysource.ErrInvalid, saying: "writable by every user"},
		{name: "file=missing", o: local.Options{PassphraseFile: "/nonexistent/kmsfs-pass"}, fail: os.ErrNotExist, saying: "/nonexistent/kmsfs-pass"},
		{name: "none", o: local.Options{LookupEnv: noEnv}, fail: keysource.ErrInvalid, saying: local.PassphraseEnv},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.o.KDF, c.o.AllowWeakKDF = kdf, true
			s, err := openPassphrase(c.o)
			if c.fail != nil {
				if !errors.Is(err, c.fail) || !strings.Contains(err.Error(), c.saying) {
					t.Fatalf("got %v, want %v saying %q", err, c.fail, c.saying)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if same := s.KeyID() == ref.KeyID(); same != c.same {
				t.Fatalf("same key as the reference: %v, want %v", same, c.same)
			}
		})
	}
	t.Run("process-env", func(t *testing.T) {
		t.Setenv(local.PassphraseEnv, "s3cret")
		s, err := openPassphrase(local.Options{KDF: kdf, AllowWeakKDF: true})
		if err != nil || s.KeyID() != ref.KeyID() {
			t.Fatalf("%v (same key: %v)", err, err == nil && s.KeyID() == ref.KeyID())
		}
	})
	t.Run("prompt-cleared", func(t *testing.T) {
		p := []byte("s3cret")
		if _, err := openPassphrase(local.Options{KDF: kdf, AllowWeakKDF: true, LookupEnv: noEnv, Prompt: func() ([]byte, error) { return p, nil }}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, make([]byte, len(p))) {
			t.Fatal("prompted passphrase not cleared")
		}
	})
	t.Run("salt", func(t *testing.T) {
		k2 := cheapKDF(t) // another salt: another key
		s, err := openPassphrase(local.Options{KDF: k2, AllowWeakKDF: true, LookupEnv: env("s3cret")})
		if err != nil || s.KeyID() == ref.KeyID() {
			t.Fatalf("%v; another salt gave the same key: %v", err, err == nil && s.KeyID() == ref.KeyID())
		}
	})
}

func TestKDFParams(t *testing.T) {
	p, err := local.NewKDFParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	if p.Alg != local.KDFScrypt || p.LogN != local.DefaultScryptLogN || p.R != local.DefaultScryptR || p.P != local.DefaultScryptP || len(p.Salt) != 16 {
		t.Fatalf("defaults: %+v", p)
	}
	q, err := local.NewKDFParams(nil)
	if err != nil || bytes.Equal(p.Salt, q.Salt) {
		t.Fatalf("two fresh parameter sets share a salt (%v)", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back local.KDFParams
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() || !bytes.Equal(back.Salt, p.Salt) {
		t.Fatalf("JSON %s came back as %+v (%v)", b, back, err)
	}
	for _, c := range []struct {
		name string
		mod  func(*local.KDFParams)
	}{
		{"alg=none", func(p *local.KDFParams) { p.Alg = "" }},
		{"alg=argon2id", func(p *local.KDFParams) { p.Alg = "argon2id" }},
		{"salt=15", func(p *local.KDFParams) { p.Salt = p.Salt[:15] }},
		{"salt=65", func(p *local.KDFParams) { p.Salt = make([]byte, 65) }},
		{"log_n=0", func(p *local.KDFParams) { p.LogN = 0 }},
		{"memory=2GiB", func(p *local.KDFParams) { p.LogN = 21 }},
		{"r=0", func(p *local.KDFParams) { p.R = 0 }},
		{"r=huge", func(p *local.KDFParams) { p.R = 1 << 40 }},
		{"p=0", func(p *local.KDFParams) { p.P = 0 }},
		{"p=17", func(p *local.KDFParams) { p.P = 17 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := p
			q.Salt = bytes.Clone(p.Salt)
			c.mod(&q)
			if err := q.Check(); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("Check: %v, want ErrInvalid", err)
			}
			if _, err := openPassphrase(local.Options{KDF: q, LookupEnv: env("x")}); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("open: %v, want ErrInvalid", err)
			}
		})
	}
}

// TestKDFFloor is the attack of an edited kmsfs.conf that lowers the
// scrypt cost of a passphrase volume: parameters below the floor are
// refused with a message naming the floor, unless a test opts in; those
// between the floor and the default load, flagged BelowDefault.
func TestKDFFloor(t *testing.T) {
	for _, c := range []struct {
		logN  uint8
		r     int
		ok    bool
		below bool
	}{
		{logN: 10, r: 8},
		{logN: 15, r: 8},
		{logN: 16, r: 1},
		{logN: 20, r: 4},
		{logN: 16, r: 8, ok: true, below: true},
		{logN: local.DefaultScryptLogN, r: 8, ok: true},
		{logN: 18, r: 8, ok: true},
	} {
		t.Run(fmt.Sprintf("log_n=%d,r=%d", c.logN, c.r), func(t *testing.T) {
			p := cheapKDF(t)
			p.LogN, p.R = c.logN, c.r
			err := p.Check()
			if c.ok {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
			} else {
				want := fmt.Sprintf("minimum log_n=%d r=%d", local.MinScryptLogN, local.MinScryptR)
				if !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Fatalf("Check: %v, want ErrInvalid naming %q", err, want)
				}
				if _, err := openPassphrase(local.Options{KDF: p, LookupEnv: env("pw")}); !errors.Is(err, keysource.ErrInvalid) {
					t.Fatalf("open: %v, want ErrInvalid", err)
				}
			}
			if got := p.BelowDefault(); got != (c.below || !c.ok) {
				t.Fatalf("BelowDefault = %v", got)
			}
		})
	}
	t.Run("allow-weak", func(t *testing.T) {
		if _, err := openPassphrase(local.Options{KDF: cheapKDF(t), AllowWeakKDF: true, LookupEnv: env("pw")}); err != nil {
			t.Fatalf("a test's cheap KDF with AllowWeakKDF: %v", err)
		}
	})
}

// TestCloseZeroesWrapKey: the wrapping key lives in a cell of the arena
// and Close zeroes it (the attack: reading a closed source's key out of
// memory); the source refuses calls afterwards.
func TestCloseZeroesWrapKey(t *testing.T) {
	for _, form := range []string{"key-file", "passphrase"} {
		t.Run("form="+form, func(t *testing.T) {
			mem := secmem.New(secmem.Options{})
			var s *local.Source
			var err error
			if form == "key-file" {
				s, err = openKeyFile(writeFile(t, randomBytes(t, 32), 0o600), local.Options{VolumeID: volA, Mem: mem})
			} else {
				s, err = openPassphrase(local.Options{VolumeID: volA, KDF: cheapKDF(t), AllowWeakKDF: true, LookupEnv: env("pw"), Mem: mem})
			}
			if err != nil {
				t.Fatal(err)
			}
			dk := randomBytes(t, 32)
			st, err := s.Wrap(context.Background(), dk)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := s.Unwrap(context.Background(), st); err != nil || !bytes.Equal(got, dk) {
				t.Fatalf("Unwrap: %v", err)
			}
			cell := local.WrapKey(s)
			if mem.InUse() != 1 || isZero(cell) {
				t.Fatalf("%d cells in use, wrap key zero %v: want the key in one cell", mem.InUse(), isZero(cell))
			}
			s.Close()
			s.Close()
			if !isZero(cell) || mem.InUse() != 0 {
				t.Fatalf("after Close: wrap key zero %v, %d cells in use", isZero(cell), mem.InUse())
			}
			if _, err := s.Unwrap(context.Background(), st); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("Unwrap after Close: %v, want ErrInvalid", err)
			}
		})
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestNewFromSpec(t *testing.T) {
	for _, c := range []struct {
		spec string
		ok   bool
	}{
		{"local:passphrase", true},
		{"local:" + writeFile(t, randomBytes(t, 32), 0o600), true},
		{"local:./passphrase", false}, // a key file of that name, which does not exist
		{"awskms:alias/x", false},
	} {
		t.Run("spec="+c.spec, func(t *testing.T) {
			spec, err := keysource.ParseSpec(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			_, err = local.Open(context.Background(), spec, local.Options{KDF: cheapKDF(t), AllowWeakKDF: true, LookupEnv: env("pw")})
			if (err == nil) != c.ok {
				t.Fatalf("error %v, want ok=%v", err, c.ok)
			}
		})
	}
}

// TestKeyIDRevealsNothing checks the key ID is a fixed fingerprint that
// does not contain the key file's bytes.
func TestKeyIDRevealsNothing(t *testing.T) {
	key := randomBytes(t, 32)
	path := writeFile(t, key, 0o600)
	a, err := openKeyFile(path, local.Options{VolumeID: volA})
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimPrefix(a.KeyID(), "file:")
	if strings.Contains(hex.EncodeToString(key), id[:8]) {
		t.Fatalf("key ID %s repeats key bytes", a.KeyID())
	}
	for i := 0; i+4 <= len(key); i++ {
		if strings.Contains(a.KeyID(), string(key[i:i+4])) {
			t.Fatalf("key ID %q contains raw key bytes", a.KeyID())
		}
	}
}

// TestWithManager runs the local source under the data-key manager: files
// created through one manager open through a fresh one.
func TestWithManager(t *testing.T) {
	s, _ := keyFileSource(t, volA)
	kdf := cheapKDF(t)
	escrow, err := openPassphrase(local.Options{VolumeID: volA, KDF: kdf, AllowWeakKDF: true, LookupEnv: env("escrow")})
	if err != nil {
		t.Fatal(err)
	}
	w, err := keysource.NewManager(keysource.Options{Primary: s, Escrow: []keysource.KeySource{escrow}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	dk, sts, err := w.NewDataKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sts {
		r, err := keysource.NewManager(keysource.Options{Primary: s, Escrow: []keysource.KeySource{escrow}, DeferPool: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.UnwrapKey(ctx, sts[i:i+1])
		r.Close()
		if err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("stanza %v: %v (key equal: %v)", sts[i], err, bytes.Equal(got, dk))
		}
	}
	t.Run("wrong-passphrase", func(t *testing.T) {
		wrong, err := openPassphrase(local.Options{VolumeID: volA, KDF: kdf, AllowWeakKDF: true, LookupEnv: env("not escrow")})
		if err != nil {
			t.Fatal(err)
		}
		r, err := keysource.NewManager(keysource.Options{Primary: wrong, DeferPool: true})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		_, err = r.UnwrapKey(ctx, sts[1:])
		if !errors.Is(err, keysource.ErrNotMine) || !strings.Contains(err.Error(), "wrong passphrase?") {
			t.Fatalf("got %v, want ErrNotMine suggesting a wrong passphrase", err)
		}
	})
}

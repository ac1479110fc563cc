package integration_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// Helpers of the key-source tests (keys_test.go, keys_bench_test.go): the
// real sources, opened as the CLI opens them, and the call counts taken at
// each source's client boundary.

// ksLoader is the one PKCS#11 Loader of the test binary, as the CLI keeps
// one per process: the module is loaded once and finalised only after the
// last Source opened through it closes.
var ksLoader = pkcs11.NewLoader()

// ksVolume is the volume every test source is bound to.
var ksVolume = [16]byte{'k', 's', '-', 'v', 'o', 'l', 'u', 'm', 'e'}

// ksTimeout bounds every key-source exchange of one test.
const ksTimeout = 45 * time.Second

// ksContext returns a context that ends with t or after ksTimeout.
func ksContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), ksTimeout)
	t.Cleanup(cancel)
	return ctx
}

// Kinds of ksCase.
const (
	ksLocal  = "local"
	ksAWS    = "awskms"
	ksPKCS11 = "pkcs11"
)

// ksCase is one real key source the tests run against.
type ksCase struct {
	name string // subtest parameter: source=<name>
	kind string // ksLocal, ksAWS or ksPKCS11
	// key returns the key spec's value for awskms (an alias or ARN) and
	// the whole spec for pkcs11 (a key on tok, the "main" token); local
	// cases use a fresh key file instead.
	key func(e *kmstest.Emulator, tok *hsmtest.Token) string
	// keyID is the KeyID its stanzas must carry, when fixed in advance
	// (awskms: the resolved ARN, never the alias); nil when not.
	keyID func(e *kmstest.Emulator) string
}

// ksCases are the sources every table-driven key test covers.
func ksCases() []ksCase {
	return []ksCase{
		{name: "local", kind: ksLocal},
		{
			name: "awskms-symmetric", kind: ksAWS,
			key:   func(*kmstest.Emulator, *hsmtest.Token) string { return kmstest.Alias },
			keyID: func(e *kmstest.Emulator) string { return e.Symmetric.ARN },
		},
		{
			name: "awskms-rsa", kind: ksAWS,
			key:   func(e *kmstest.Emulator, _ *hsmtest.Token) string { return e.RSAEncrypt.ARN },
			keyID: func(e *kmstest.Emulator) string { return e.RSAEncrypt.ARN },
		},
		{name: "pkcs11-aes", kind: ksPKCS11, key: func(_ *kmstest.Emulator, tok *hsmtest.Token) string { return tok.AESSpec() }},
		{name: "pkcs11-rsa", kind: ksPKCS11, key: func(_ *kmstest.Emulator, tok *hsmtest.Token) string { return tok.RSASpec() }},
	}
}

// ksEnv holds the local-kms emulator of one test or benchmark. It is
// started only if local-kms is installed, so that local and pkcs11 cases
// still run where it is not (awskms cases then skip, or fail under
// CI=true). The SoftHSM token store is the suite's, from TestMain.
type ksEnv struct {
	kms *kmstest.Emulator // nil when local-kms is not installed
}

// newKSEnv starts an emulator for t, which stops it when t ends.
func newKSEnv(t testing.TB) *ksEnv {
	t.Helper()
	env := &ksEnv{}
	if fusetest.KMSAvailable() == nil || fusetest.CI() {
		env.kms = fusetest.KMS(t)
	}
	return env
}

// emulator returns the emulator, or ends t as fusetest.KMS does when
// local-kms is missing: a skip, or a failure under CI=true.
func (env *ksEnv) emulator(t testing.TB) *kmstest.Emulator {
	t.Helper()
	if env.kms == nil {
		fusetest.Unavailable(t, "no local-kms emulator: %v", fusetest.KMSAvailable())
	}
	return env.kms
}

// ksSource is one real key source and the calls made at its client
// boundary. For awskms that is the SDK client: a kmstest.Counter registered
// on it counts KMS operations (Decrypt, GenerateDataKey, Encrypt…). A local
// key has no client, and a pkcs11 Source turns each Wrap or Unwrap into one
// operation on the token (an RSA Wrap into none); so for both the boundary
// is the KeySource itself, and a thin ksCounting around the real source
// counts its Wrap and Unwrap calls.
type ksSource struct {
	ks       keysource.KeySource // what Managers use
	kms      *kmstest.Counter    // awskms
	counting *ksCounting         // local and pkcs11
}

// unwraps returns the unwrap calls made at the client boundary: KMS Decrypt
// operations, or Unwrap calls.
func (s *ksSource) unwraps() int {
	if s.kms != nil {
		return s.kms.Calls("Decrypt")
	}
	return int(s.counting.unwraps.Load())
}

// calls returns every call made at the client boundary: all KMS
// operations, or Wrap and Unwrap calls.
func (s *ksSource) calls() int {
	if s.kms != nil {
		return s.kms.Total()
	}
	return int(s.counting.wraps.Load() + s.counting.unwraps.Load())
}

// resetCalls sets the counts back to zero.
func (s *ksSource) resetCalls() {
	if s.kms != nil {
		s.kms.Reset()
		return
	}
	s.counting.wraps.Store(0)
	s.counting.unwraps.Store(0)
}

// ksCounting counts the Wrap and Unwrap calls that reach the real
// source it embeds. It hides the optional interfaces (Generator,
// Describer), so it is only put around sources that have no Generator.
type ksCounting struct {
	keysource.KeySource
	wraps, unwraps atomic.Int64
}

func (c *ksCounting) Wrap(ctx context.Context, dataKey []byte) (keysource.Stanza, error) {
	c.wraps.Add(1)
	return c.KeySource.Wrap(ctx, dataKey)
}

func (c *ksCounting) Unwrap(ctx context.Context, s keysource.Stanza) ([]byte, error) {
	c.unwraps.Add(1)
	return c.KeySource.Unwrap(ctx, s)
}

// open opens c's source bound to ksVolume, closing it when t ends. An
// awskms source talks to endpoint, or to the emulator when endpoint is "".
func (env *ksEnv) open(t testing.TB, c ksCase, endpoint string) *ksSource {
	t.Helper()
	switch c.kind {
	case ksLocal:
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, ksRandomKey(t), 0o600); err != nil {
			t.Fatal(err)
		}
		src, err := local.Open(ksContext(t), keysource.Spec{Type: local.Type, Value: path}, local.Options{VolumeID: ksVolume})
		if err != nil {
			t.Fatalf("local key file: %v", err)
		}
		cs := &ksCounting{KeySource: src}
		return &ksSource{ks: cs, counting: cs}
	case ksAWS:
		key := c.key(env.emulator(t), nil)
		ks, ctr, err := env.openAWS(t, key, endpoint)
		if err != nil {
			t.Fatalf("awskms.Open(%s): %v", key, err)
		}
		return &ksSource{ks: ks, kms: ctr}
	case ksPKCS11:
		tok := suite.HSM(t).Token("main")
		src := ksOpenPKCS11(t, c.key(nil, tok))
		cs := &ksCounting{KeySource: src}
		return &ksSource{ks: cs, counting: cs}
	}
	t.Fatalf("unknown key-source kind %q", c.kind)
	return nil
}

// openAWS opens an awskms source for key, with a fresh Counter registered
// on its SDK client. Retries are few and short, so a test that meets a
// failure ends quickly.
func (env *ksEnv) openAWS(t testing.TB, key, endpoint string) (keysource.KeySource, *kmstest.Counter, error) {
	t.Helper()
	ctr := kmstest.NewCounter()
	cfg := env.emulator(t).Config()
	ks, err := awskms.Open(ksContext(t), keysource.Spec{Type: awskms.Type, Value: key}, awskms.Options{
		VolumeID:    ksVolume,
		Config:      &cfg,
		Endpoint:    endpoint,
		APIOptions:  []func(*middleware.Stack) error{ctr.Register},
		MaxAttempts: 3,
		BaseDelay:   10 * time.Millisecond,
		MaxBackoff:  100 * time.Millisecond,
	})
	return ks, ctr, err
}

// openPKCS11 opens spec through ksLoader, reading the PIN from the file the
// spec names (never the host's KMSFS_PKCS11_* variables).
func ksOpenPKCS11(t testing.TB, spec string) *pkcs11.Source {
	t.Helper()
	ps, err := keysource.ParseSpec(spec)
	if err != nil {
		t.Fatalf("parse spec: %v", err)
	}
	noEnv := func(string) (string, bool) { return "", false }
	src, err := pkcs11.Open(ksContext(t), ps, pkcs11.Options{VolumeID: ksVolume, Loader: ksLoader, LookupEnv: noEnv})
	if err != nil {
		t.Fatalf("open %s: %v", spec, err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("close %s: %v", spec, err)
		}
	})
	return src
}

// newManager returns a Manager for o that t closes when it ends.
func ksManager(t testing.TB, o keysource.Options) *keysource.Manager {
	t.Helper()
	m, err := keysource.NewManager(o)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// randomKey returns 32 random bytes; crypto/rand.Read never fails.
func ksRandomKey(testing.TB) []byte {
	k := make([]byte, keysource.DataKeySize)
	rand.Read(k)
	return k
}

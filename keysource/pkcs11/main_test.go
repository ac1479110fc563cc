//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
	p11 "github.com/miekg/pkcs11"
)

// The token store of this test run, made once before any test loads the
// module (see hsmtest), and the one Loader all tests share, as the CLI
// shares one per process.
var (
	testHSM    *hsmtest.HSM
	testHSMErr error
	loader     = pkcs11.NewLoader()
	// shimDir is where the p11shim module is built, once per run.
	shimDir string
	// infos holds what the tokens report about themselves, by name.
	infos map[string]tokenFacts
)

// Tokens: "main" serves most tests; "other" has keys of the same labels;
// "pin" is logged in to only by TestPIN, so that its wrong PINs meet a
// token nobody in the process is logged in to.
const (
	aesLabel = "aes key"
	rsaLabel = "rsa-key"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		// A child of underShim, which runs one test: a token store of
		// its own, so that no other process reads it meanwhile.
		testHSM, testHSMErr = hsmtest.Start(hsmtest.Options{Tokens: []hsmtest.TokenOptions{
			{Name: "shim", AESLabel: aesLabel, RSALabel: rsaLabel},
		}})
		code := m.Run()
		testHSM.Close()
		os.Exit(code)
	}
	testHSM, testHSMErr = hsmtest.Start(hsmtest.Options{Tokens: []hsmtest.TokenOptions{
		{Name: "main", AESLabel: aesLabel, RSALabel: rsaLabel},
		{Name: "other", AESLabel: aesLabel, RSALabel: rsaLabel},
		{Name: "pin", AESLabel: aesLabel},
	}})
	if testHSMErr == nil {
		infos, testHSMErr = prepareTokens(testHSM)
	}
	dir, err := os.MkdirTemp("", "kmsfs-pkcs11-shim-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shimDir = dir
	code := m.Run()
	if err := testHSM.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// alwaysAuthLabel labels an RSA key pair on token "main" whose private
// key wants the PIN before every use (CKA_ALWAYS_AUTHENTICATE; SoftHSM
// takes the attribute on private keys only).
const alwaysAuthLabel = "always-auth"

// tokenFacts is what a token says about itself in CK_TOKEN_INFO.
type tokenFacts struct {
	slot                       uint
	serial, model, manufacture string
}

// prepareTokens adds what hsmtest does not make, and reads each token's
// facts, before any test loads the module.
func prepareTokens(h *hsmtest.HSM) (map[string]tokenFacts, error) {
	if err := h.AddAlwaysAuthRSAKey(h.Token("main"), alwaysAuthLabel); err != nil {
		return nil, fmt.Errorf("make the always-authenticate key: %w", err)
	}
	c := p11.New(h.Module)
	if c == nil {
		return nil, fmt.Errorf("cannot load %s", h.Module)
	}
	defer c.Destroy()
	if err := c.Initialize(); err != nil {
		return nil, err
	}
	defer c.Finalize()
	slots, err := c.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	facts := map[string]tokenFacts{}
	for _, name := range []string{"main", "other", "pin"} {
		tok := h.Token(name)
		for _, sl := range slots {
			ti, err := c.GetTokenInfo(sl)
			if err != nil || strings.TrimRight(ti.Label, " ") != tok.Label {
				continue
			}
			facts[name] = tokenFacts{slot: sl, serial: strings.TrimRight(ti.SerialNumber, " "),
				model: strings.TrimRight(ti.Model, " "), manufacture: strings.TrimRight(ti.ManufacturerID, " ")}
		}
		if _, ok := facts[name]; !ok {
			return nil, fmt.Errorf("token %s not found", tok.Label)
		}
	}
	return facts, nil
}

func needHSM(t testing.TB) *hsmtest.HSM {
	t.Helper()
	return fusetest.NeedHSM(t, testHSM, testHSMErr)
}

var (
	volA = [16]byte{'v', 'o', 'l', 'u', 'm', 'e', ' ', 'A'}
	volB = [16]byte{'v', 'o', 'l', 'u', 'm', 'e', ' ', 'B'}
)

// noEnv is an empty environment, so the host's KMSFS_PKCS11_* variables
// never leak into a test.
func noEnv(string) (string, bool) { return "", false }

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// open opens spec through the shared Loader (unless o names another) and
// closes it when t ends.
func open(t testing.TB, spec string, vol [16]byte, o pkcs11.Options) *pkcs11.Source {
	t.Helper()
	s, err := tryOpen(t, spec, vol, o)
	if err != nil {
		t.Fatalf("open %s: %v", spec, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func tryOpen(t testing.TB, spec string, vol [16]byte, o pkcs11.Options) (*pkcs11.Source, error) {
	t.Helper()
	ks, err := keysource.ParseSpec(spec)
	if err != nil {
		t.Fatalf("parse spec %s: %v", spec, err)
	}
	if o.LookupEnv == nil {
		o.LookupEnv = noEnv
	}
	o.VolumeID = vol
	if o.Loader == nil {
		o.Loader = loader
	}
	return pkcs11.Open(context.Background(), ks, o)
}

// keyCase is one way a Source wraps.
type keyCase struct {
	name    string
	spec    string
	opts    pkcs11.Options
	bodyLen int
	// determined: wrapping one key twice gives one body (RFC 5649 has no
	// IV; the volume binding is all that varies).
	determined bool
}

func keyCases(h *hsmtest.HSM) []keyCase {
	tok := h.Token("main")
	return []keyCase{
		// version 2, kind, fingerprint length, 3-byte check value
		{name: "aes-gcm", spec: tok.AESSpec(), bodyLen: 2 + 1 + 3 + 1 + 12 + 48},
		{name: "aes-kwp", spec: tok.AESSpec(), opts: pkcs11.Options{AESKeyWrap: true}, bodyLen: 2 + 1 + 3 + 56, determined: true},
		// a 32-byte SHA-256 public key fingerprint, the OAEP hash
		{name: "rsa-oaep", spec: tok.RSASpec(), bodyLen: 2 + 1 + 32 + 1 + 256},
	}
}

// newDataKey returns a random data key; crypto/rand.Read never fails.
func newDataKey() []byte {
	k := make([]byte, keysource.DataKeySize)
	rand.Read(k)
	return k
}

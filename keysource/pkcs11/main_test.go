//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto/rand"
	"os"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// The token store of this test run, made once before any test loads the
// module (see hsmtest), and the one Loader all tests share, as the CLI
// shares one per process.
var (
	suite  *fusetest.Suite
	loader = pkcs11.NewLoader()
)

// Tokens: "main" serves most tests; "other" has keys of the same labels;
// "pin" is logged in to only by TestPIN, so that its wrong PINs meet a
// token nobody in the process is logged in to.
const (
	aesLabel = "aes key"
	rsaLabel = "rsa-key"
)

func TestMain(m *testing.M) {
	suite = fusetest.Setup(fusetest.SuiteOptions{Tokens: []hsmtest.TokenOptions{
		{Name: "main", AESLabel: aesLabel, RSALabel: rsaLabel},
		{Name: "other", AESLabel: aesLabel, RSALabel: rsaLabel},
		{Name: "pin", AESLabel: aesLabel},
	}})
	os.Exit(suite.Run(m))
}

func needHSM(t testing.TB) *hsmtest.HSM {
	t.Helper()
	return suite.HSM(t)
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
		{name: "aes-gcm", spec: tok.AESSpec(), bodyLen: 62},
		{name: "aes-kwp", spec: tok.AESSpec(), opts: pkcs11.Options{AESKeyWrap: true}, bodyLen: 58, determined: true},
		{name: "rsa-oaep", spec: tok.RSASpec(), bodyLen: 3 + 256},
	}
}

// newDataKey returns a random data key; crypto/rand.Read never fails.
func newDataKey() []byte {
	k := make([]byte, keysource.DataKeySize)
	rand.Read(k)
	return k
}

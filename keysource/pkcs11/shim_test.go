//go:build cgo

package pkcs11_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/internal/p11shim"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// The shim reads its configuration, and SoftHSM its token store, once per
// process, and PKCS#11 allows one initialisation of a module per process.
// So each test behind the shim runs in a child process of its own, with a
// token store of its own (see TestMain): the parent builds the shim and
// writes its configuration, and the child runs the one (sub)test again.
const childEnv = "KMSFS_PKCS11_TEST_SHIM" // the shim module's path, in a child

// shimToken is token "shim" of the child's store, reached through the
// shim or directly.
type shimToken struct {
	tok    *hsmtest.Token
	module string // the shim
}

// spec returns the key spec of object behind the shim, with query
// attributes added.
func (s *shimToken) spec(object string, query ...string) string {
	u := s.tok.URIVia(s.module, object)
	for _, q := range query {
		u += "&" + q
	}
	return u
}

// direct returns the key spec of object on SoftHSM itself, as a token
// without the shim's behaviours reaches it.
func (s *shimToken) direct(object string) string { return s.tok.URI(object) }

// underShim runs the calling test again in a child process whose module
// is the shim under cfg, forwarding to the child's SoftHSM. In the child
// it returns the token to use; in the parent it waits for the child,
// fails if the child did, and returns nil.
func underShim(t *testing.T, cfg p11shim.Config) *shimToken {
	t.Helper()
	if mod := os.Getenv(childEnv); mod != "" {
		return &shimToken{tok: needHSM(t).Token("shim"), module: mod}
	}
	h := needHSM(t)
	mod := p11shim.Need(t, shimDir)
	cfg.Module = h.Module
	conf := filepath.Join(t.TempDir(), "p11shim.conf")
	if err := cfg.WriteFile(conf); err != nil {
		t.Fatal(err)
	}
	var run []string
	for _, part := range strings.Split(t.Name(), "/") {
		run = append(run, "^"+regexp.QuoteMeta(part)+"$")
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run="+strings.Join(run, "/"), "-test.count=1", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), childEnv+"="+mod, p11shim.EnvConfig+"="+conf)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child process: %v\n%s", err, res)
	}
	if !bytes.Contains(res, []byte("--- PASS: "+t.Name()+" ")) {
		t.Fatalf("child process did not run %s:\n%s", t.Name(), res)
	}
	return nil
}

// openShim opens spec in a child through the shared Loader.
func openShim(t *testing.T, spec string) (*pkcs11.Source, error) {
	t.Helper()
	s, err := tryOpen(t, spec, volA, pkcs11.Options{})
	if err == nil {
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	return s, err
}

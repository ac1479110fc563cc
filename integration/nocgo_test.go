//go:build !cgo

package integration_test

import (
	"debug/buildinfo"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// These tests run only in a build without cgo (make build-nocgo runs them
// with CGO_ENABLED=0), where TestMain builds a cgo-free kmsfs.

// needNoCgoBinary returns the kmsfs binary after checking that it was
// built with CGO_ENABLED=0, so that a pass means what it says.
func needNoCgoBinary(t *testing.T) string {
	t.Helper()
	bin := suite.Kmsfs(t)
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("build info of %s: %v", bin, err)
	}
	for _, s := range bi.Settings {
		if s.Key == "CGO_ENABLED" && s.Value == "0" {
			return bin
		}
	}
	t.Fatalf("%s was not built with CGO_ENABLED=0: %v", bin, bi.Settings)
	return ""
}

// TestNoCgoLocalMount inits, mounts and uses a local-key volume with the
// cgo-free binary.
func TestNoCgoLocalMount(t *testing.T) {
	needNoCgoBinary(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	want := []byte("written by a kmsfs built without cgo")
	mntWriteFile(t, v.Path("f"), want)
	v.Remount(t)
	mntCheckFile(t, v.Path("f"), want)
}

// TestNoCgoPKCS11Refused: the cgo-free binary refuses a PKCS#11 key at
// init with a message that says to rebuild with cgo, and writes no
// kmsfs.conf.
func TestNoCgoPKCS11Refused(t *testing.T) {
	bin := needNoCgoBinary(t)
	const noCgo = "kmsfs was built without PKCS#11 support (CGO_ENABLED=0); rebuild with cgo to use pkcs11: keys"
	tests := []struct{ name, key string }{
		{"key=aes,module=uri", "pkcs11:token=hsm;object=aes?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/nonexistent/pin"},
		{"key=rsa,module=none", "pkcs11:token=hsm;object=rsa;type=private"},
	}
	for _, tt := range tests {
		key := tt.key
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cipher := filepath.Join(dir, "cipher")
			if err := os.Mkdir(cipher, 0o700); err != nil {
				t.Fatal(err)
			}
			env := fusetest.TrustEnv(t, dir, nil, nil)
			out, err := fusetest.RunKmsfs(bin, nil, env, fusetest.InitArgs([]string{key}, nil, cipher)...)
			if err == nil {
				t.Fatalf("kmsfs init --key %s succeeded:\n%s", key, out)
			}
			if !strings.Contains(out, noCgo) {
				t.Errorf("kmsfs init --key %s: %v\n%s\nwant the message %q", key, err, out, noCgo)
			}
			if _, err := os.Stat(filepath.Join(cipher, "kmsfs.conf")); !os.IsNotExist(err) {
				t.Errorf("kmsfs.conf after a refused init: %v", err)
			}
		})
	}
}

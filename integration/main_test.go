// Package integration_test runs kmsfs for real: mounts through FUSE, the
// local-kms emulator (internal/kmstest) and SoftHSM tokens
// (internal/hsmtest). Under CI=true nothing here skips: a test that cannot
// mount, reach the emulator or open the token fails.
package integration_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
)

// Shared by every test of the package, made once in TestMain.
var (
	// testHSM is this run's SoftHSM token store: token "main" has an AES
	// key "aes" and an RSA key pair "rsa". SOFTHSM2_CONF stays set, so
	// kmsfs processes started by tests see the same tokens.
	testHSM    *hsmtest.HSM
	testHSMErr error
	// kmsfsBin is the kmsfs binary built from this tree for this run.
	kmsfsBin    string
	kmsfsBinErr error
)

func TestMain(m *testing.M) {
	testHSM, testHSMErr = hsmtest.Start(hsmtest.Options{Tokens: []hsmtest.TokenOptions{
		{Name: "main", AESLabel: "aes", RSALabel: "rsa"},
	}})
	dir, err := os.MkdirTemp("", "kmsfs-integration-bin-")
	if err == nil {
		kmsfsBin = filepath.Join(dir, "kmsfs")
		out, berr := exec.Command("go", "build", "-o", kmsfsBin, "github.com/kmsfs/kmsfs/cmd/kmsfs").CombinedOutput()
		if berr != nil {
			kmsfsBinErr = fmt.Errorf("go build kmsfs: %v: %s", berr, out)
		}
		// The binary must be reachable by the unprivileged user too.
		os.Chmod(dir, 0o755)
	} else {
		kmsfsBinErr = err
	}
	// Volumes get a trust dir of their own (mntTrustEnv); this one catches
	// any other kmsfs command, so no test writes the host's trust dir.
	trustDir, terr := os.MkdirTemp("", "kmsfs-integration-trust-")
	if terr == nil {
		os.Setenv("KMSFS_TRUST_DIR", trustDir)
	}
	code := m.Run()
	if terr == nil {
		os.RemoveAll(trustDir)
	}
	if testHSM != nil {
		testHSM.Close()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// needBinary returns the kmsfs binary or fails the test.
func needBinary(t testing.TB) string {
	t.Helper()
	if kmsfsBinErr != nil {
		t.Fatal(kmsfsBinErr)
	}
	return kmsfsBin
}

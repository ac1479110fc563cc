// Package integration_test runs kmsfs for real: the binary mounts through
// FUSE, with the local-kms emulator and SoftHSM tokens, all set up through
// internal/fusetest. Under CI=true nothing here skips: a test that cannot
// mount, reach the emulator or open the token fails.
package integration_test

import (
	"os"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
)

// suite is what TestMain set up once for every test of the package: the
// kmsfs binary built from this tree, and the SoftHSM token store (token
// "main" has an AES key "aes" and an RSA key pair "rsa").
var suite *fusetest.Suite

func TestMain(m *testing.M) {
	suite = fusetest.Setup(fusetest.SuiteOptions{
		Kmsfs:  true,
		Tokens: []hsmtest.TokenOptions{{Name: "main", AESLabel: "aes", RSALabel: "rsa"}},
		Steps:  steps,
	})
	os.Exit(suite.Run(m))
}

package integration_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// TestLeastPrivilegePolicy mounts awskms volumes through the fault proxy's
// permission mode, which answers every operation a key policy would not
// grant with AWS's AccessDeniedException: with only GenerateDataKey,
// Decrypt and DescribeKey (symmetric; GetPublicKey for RSA) a volume
// inits, mounts, writes, remounts and reads; a read-only mount needs only
// Decrypt and DescribeKey. No request is denied, and none is Encrypt.
func TestLeastPrivilegePolicy(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		name       string
		key        string
		initAllow  []string
		mountAllow []string
		readOnly   bool
	}{
		{"key=alias,mount=rw", kmstest.Alias, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, false},
		{"key=rsa,mount=rw", e.RSAEncrypt.ARN, []string{"GetPublicKey", "Decrypt", "DescribeKey"}, []string{"GetPublicKey", "Decrypt", "DescribeKey"}, false},
		{"key=alias,mount=ro", kmstest.Alias, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, []string{"Decrypt", "DescribeKey"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			proxy.SetPermissions(&kmstest.Permissions{Allow: tt.initAllow})
			v := suite.InitVolume(t, fusetest.CLIOptions{
				Keys:     []string{"awskms:" + tt.key},
				InitArgs: []string{"--data-key-policy", "per-file"},
				Env:      fusetest.AWSEnvAt(e, proxy.URL),
			})
			data := bytes.Repeat([]byte("least privilege\n"), 1000)
			if tt.readOnly {
				v.Mount(t)
				if err := os.WriteFile(v.Path("f"), data, 0o644); err != nil {
					t.Fatal(err)
				}
				v.Unmount(t)
			}
			proxy.SetPermissions(&kmstest.Permissions{Allow: tt.mountAllow})
			before := proxy.Failed()
			if tt.readOnly {
				v.Mount(t, "--ro")
			} else {
				v.Mount(t)
				if err := os.WriteFile(v.Path("f"), data, 0o644); err != nil {
					t.Fatal(err)
				}
				v.Remount(t) // the next open must unwrap through KMS
			}
			got, err := os.ReadFile(v.Path("f"))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v (%d bytes)", err, len(got))
			}
			v.Unmount(t)
			if n := proxy.Failed() - before; n != 0 {
				t.Errorf("%d requests were denied or failed under the least-privilege policy", n)
			}
			if n := proxy.Requests("Encrypt"); n != 0 {
				t.Errorf("%d Encrypt requests: the policy grants none", n)
			}
			if n := proxy.Requests("Decrypt"); n == 0 {
				t.Error("no Decrypt request: the read did not go through KMS, so the test proves nothing")
			}
		})
	}
}

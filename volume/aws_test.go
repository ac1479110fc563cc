package volume_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// A key policy of least privilege is enough to init and mount an awskms
// volume: the proxy allows only the listed operations, as a key policy
// granting only those would, and denies every other with AWS's
// AccessDeniedException. A policy short of GenerateDataKey is refused at
// init, naming the operation.
func TestAWSLeastPrivilege(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		name     string
		key      string
		allow    []string
		readOnly bool
		denied   string // operation the init must be refused for; "" for success
	}{
		{"key=symmetric,allow=generate+decrypt+describe", e.Symmetric.ARN, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, false, ""},
		{"key=alias,allow=generate+decrypt+describe", kmstest.Alias, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, false, ""},
		{"key=rsa,allow=public-key+decrypt+describe", e.RSAEncrypt.ARN, []string{"GetPublicKey", "Decrypt", "DescribeKey"}, false, ""},
		{"key=symmetric,allow=generate+decrypt+describe,ro", e.Symmetric.ARN, []string{"GenerateDataKey", "Decrypt", "DescribeKey"}, true, ""},
		{"key=symmetric,allow=encrypt+decrypt+describe", e.Symmetric.ARN, []string{"Encrypt", "Decrypt", "DescribeKey"}, false, "GenerateDataKey"},
		{"key=symmetric,allow=generate+describe", e.Symmetric.ARN, []string{"GenerateDataKey", "DescribeKey"}, false, "Decrypt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := kmstest.NewProxy(t, e.Endpoint)
			proxy.SetPermissions(&kmstest.Permissions{Allow: tt.allow})
			e.SetAWSEnv(t, proxy.URL)
			d := t.TempDir()
			v := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust")}
			_, _, err := volume.Init(ctx(t), v.dir, volume.InitOptions{Keys: []string{"awskms:" + tt.key}, TrustDir: v.trust})
			if tt.denied != "" {
				if !errors.Is(err, keysource.ErrDenied) || !strings.Contains(err.Error(), "kms:"+tt.denied) {
					t.Fatalf("Init = %v, want access denied for kms:%s", err, tt.denied)
				}
				return
			}
			if err != nil {
				t.Fatalf("Init: %v", err)
			}
			vol, err := v.open(t, volume.Options{CheckKeys: true, ReadOnly: tt.readOnly})
			if err != nil {
				t.Fatalf("Open(CheckKeys): %v", err)
			}
			if got := vol.Sources[0].KeyID(); !strings.HasPrefix(got, "arn:aws:kms:"+e.Region+":") {
				t.Errorf("primary key ID %q, want a key ARN", got)
			}
			if n := proxy.Failed(); n != 0 {
				t.Errorf("%d requests were denied or failed; the listed operations should be all a volume needs", n)
			}
			if n := proxy.Requests("Encrypt"); n != 0 {
				t.Errorf("%d Encrypt requests; a volume with one key needs none", n)
			}
		})
	}
}

package volume_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// A key policy of least privilege is enough to init and mount an awskms
// volume, names encrypted (the name key file costs a data key at init and
// an unwrap at open, nothing more): the proxy allows only the listed
// operations, as a key policy granting only those would, and denies every
// other with AWS's AccessDeniedException. A policy short of
// GenerateDataKey is refused at init, naming the operation.
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
			_, _, err := volume.Init(ctx(t), v.dir, volume.InitOptions{Keys: []string{"awskms:" + tt.key}, TrustDir: v.trust, EncryptedNames: true})
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
			if len(vol.NameKey()) != names.KeySize {
				t.Errorf("NameKey: %d bytes, want %d", len(vol.NameKey()), names.KeySize)
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

// TestNamesWriteOnlyHost: a host holding only the public half of the
// volume's RSA key opens it to encrypt files but cannot unwrap the name
// key; if it (or anyone with the public key) writes a kmsfs.names of its
// own, valid as a cipher file of the volume, a host with the KMS key
// refuses it because its ID is not the approved one.
func TestNamesWriteOnlyHost(t *testing.T) {
	e := fusetest.KMS(t)
	e.SetAWSEnv(t, e.Endpoint)
	d := t.TempDir()
	tv := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust")}
	if _, _, err := volume.Init(ctx(t), tv.dir, volume.InitOptions{Keys: []string{"awskms:" + e.RSAEncrypt.ARN}, TrustDir: tv.trust, EncryptedNames: true}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	out, err := e.Client().GetPublicKey(ctx(t), &kms.GetPublicKeyInput{KeyId: aws.String(e.RSAEncrypt.ARN)})
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(d, "public.der")
	if err := os.WriteFile(pub, out.PublicKey, 0o600); err != nil {
		t.Fatal(err)
	}
	wo, err := tv.open(t, volume.Options{ReadOnly: true, PublicKeyFile: pub})
	if err != nil {
		t.Fatalf("Open with the public key only: %v", err)
	}
	if !wo.EncryptedNames() || wo.NameKey() != nil {
		t.Fatalf("public-key-only Open: EncryptedNames %v, NameKey of %d bytes; want true and none", wo.EncryptedNames(), len(wo.NameKey()))
	}
	forged, err := names.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	writeNamesFile(t, wo, tv.dir, forged)
	_, err = tv.open(t, volume.Options{ReadOnly: true})
	if !errors.Is(err, volume.ErrNameKey) || !strings.Contains(err.Error(), "the file was replaced") {
		t.Fatalf("Open after a public-key host wrote kmsfs.names: %v, want it refused as replaced", err)
	}
}

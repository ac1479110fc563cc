package awskms_test

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// writePublicKey writes the key's public key as
// `aws kms get-public-key --output text --query PublicKey | base64 -d`
// does (SubjectPublicKeyInfo DER), or as PEM.
func writePublicKey(t *testing.T, e *kmstest.Emulator, key kmstest.Key, asPEM bool) string {
	t.Helper()
	out, err := e.Client().GetPublicKey(testContext(t), &kms.GetPublicKeyInput{KeyId: aws.String(key.ARN)})
	if err != nil {
		t.Fatal(err)
	}
	der := out.PublicKey
	if asPEM {
		der = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	p := filepath.Join(t.TempDir(), "public.der")
	if err := os.WriteFile(p, der, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A host with only the public key writes stanzas that only a host with
// the KMS key can read.
func TestPublicKeyOnly(t *testing.T) {
	e := fusetest.KMS(t)
	full := mustSource(t, e, e.RSAEncrypt.ARN, volume1, nil)
	for _, asPEM := range []bool{false, true} {
		t.Run("pem="+map[bool]string{false: "no", true: "yes"}[asPEM], func(t *testing.T) {
			path := writePublicKey(t, e, e.RSAEncrypt, asPEM)
			// No configuration, credentials or endpoint: the source makes
			// no KMS call.
			ks, err := awskms.New(testContext(t), e.RSAEncrypt.ARN, volume1, awskms.WithPublicKeyFile(path))
			if err != nil {
				t.Fatal(err)
			}
			if ks.KeyID() != e.RSAEncrypt.ARN {
				t.Fatalf("KeyID = %s, want %s", ks.KeyID(), e.RSAEncrypt.ARN)
			}
			if _, ok := ks.(keysource.Generator); ok {
				t.Error("public-key-only source claims to generate data keys")
			}
			dk := newDataKey()
			st := mustWrap(t, ks, dk)

			_, err = ks.Unwrap(testContext(t), st)
			wantErr(t, err, keysource.ErrDenied, e.RSAEncrypt.ARN, "only the public key", "kms:Decrypt")
			mustUnwrap(t, full, st, dk)

			ds, err := ks.(keysource.Describer).Describe(testContext(t))
			if err != nil || ds.Usable || ds.KeyID != e.RSAEncrypt.ARN {
				t.Errorf("Describe = %+v, %v; want not usable", ds, err)
			}
		})
	}
}

func TestPublicKeyOnlyRefuses(t *testing.T) {
	e := fusetest.KMS(t)
	rsaPath := writePublicKey(t, e, e.RSAEncrypt, false)
	garbage := filepath.Join(t.TempDir(), "garbage.der")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key, path string
		words           []string
	}{
		{"key=alias", kmstest.Alias, rsaPath, []string{"needs the key ARN"}},
		{"key=alias-arn", e.AliasARN(), rsaPath, []string{"needs the key ARN"}},
		{"key=id", e.RSAEncrypt.ID, rsaPath, []string{"needs the key ARN"}},
		{"file=missing", e.RSAEncrypt.ARN, filepath.Join(t.TempDir(), "missing.der"), []string{"no such file"}},
		{"file=garbage", e.RSAEncrypt.ARN, garbage, []string{"SubjectPublicKeyInfo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := awskms.New(testContext(t), tt.key, volume1, awskms.WithPublicKeyFile(tt.path))
			wantErr(t, err, keysource.ErrInvalid, tt.words...)
		})
	}
}

package awskms_test

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
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
	full := mustSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{})
	for _, asPEM := range []bool{false, true} {
		t.Run("pem="+map[bool]string{false: "no", true: "yes"}[asPEM], func(t *testing.T) {
			path := writePublicKey(t, e, e.RSAEncrypt, asPEM)
			// No configuration, credentials or endpoint: the source makes
			// no KMS call.
			ks, err := awskms.Open(testContext(t), spec(e.RSAEncrypt.ARN), awskms.Options{VolumeID: volume1, PublicKeyFile: path})
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
			_, err := awskms.Open(testContext(t), spec(tt.key), awskms.Options{VolumeID: volume1, PublicKeyFile: tt.path})
			wantErr(t, err, keysource.ErrInvalid, tt.words...)
		})
	}
}

// TestPublicKeyFingerprint gives a public-key-only host the public key of
// another key (the signing key's, or a key of its own) for the volume's
// RSA key: with the fingerprint recorded at init, Open refuses it, since
// every file it wrapped would be unrecoverable. The right key's file, and
// the key itself through KMS, pass.
func TestPublicKeyFingerprint(t *testing.T) {
	e := fusetest.KMS(t)
	full := mustSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{})
	fp, ok := full.(interface{ PublicKeyFingerprint() string })
	if !ok {
		t.Fatal("an RSA source has no PublicKeyFingerprint")
	}
	want := fp.PublicKeyFingerprint()
	if !strings.HasPrefix(want, "sha256:") || len(want) != len("sha256:")+64 {
		t.Fatalf("fingerprint %q, want sha256: and 64 hex digits", want)
	}
	right := writePublicKey(t, e, e.RSAEncrypt, false)
	signing := writePublicKey(t, e, e.RSASign, true)
	tests := []struct {
		name, path, fingerprint string
		words                   []string
	}{
		{"file=right", right, want, nil},
		{"file=signing-key", signing, want, []string{"fingerprint", want, "not this key's public key"}},
		{"file=signing-key,none-recorded", signing, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := awskms.Open(testContext(t), spec(e.RSAEncrypt.ARN), awskms.Options{VolumeID: volume1, PublicKeyFile: tt.path, PublicKeySHA256: tt.fingerprint})
			if tt.words == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			wantErr(t, err, keysource.ErrInvalid, tt.words...)
		})
	}
	t.Run("kms=recorded-other", func(t *testing.T) {
		_, err := newSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{PublicKeySHA256: "sha256:" + strings.Repeat("0", 64)})
		wantErr(t, err, keysource.ErrInvalid, "KMS GetPublicKey", "not this key's public key")
	})
}

// TestGetPublicKeyChecked: an RSA key whose GetPublicKey answer says it
// cannot wrap with RSAES_OAEP_SHA_256 (a signing key, another key spec,
// only SHA-1 OAEP) is refused at Open, naming the cause: wrapping with
// its public key would make files no Decrypt opens.
func TestGetPublicKeyChecked(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	tests := []struct {
		name  string
		rw    kmstest.PublicKeyRewrite
		words []string
	}{
		{"usage=sign-verify", kmstest.PublicKeyRewrite{KeyUsage: "SIGN_VERIFY"}, []string{"GetPublicKey", "key usage SIGN_VERIFY"}},
		{"spec=ecc", kmstest.PublicKeyRewrite{KeySpec: "ECC_NIST_P256"}, []string{"GetPublicKey", "key spec ECC_NIST_P256"}},
		{"algorithms=oaep-sha1", kmstest.PublicKeyRewrite{EncryptionAlgorithms: []string{"RSAES_OAEP_SHA_1"}}, []string{"GetPublicKey", "RSAES_OAEP_SHA_256"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy.RewritePublicKey(tt.rw)
			t.Cleanup(func() { proxy.RewritePublicKey(kmstest.PublicKeyRewrite{}) })
			_, err := newSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			wantErr(t, err, keysource.ErrInvalid, tt.words...)
		})
	}
	if _, err := newSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL}); err != nil {
		t.Fatalf("Open with the answer as KMS gives it: %v", err)
	}
}

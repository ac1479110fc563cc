package awskms

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/keysource"
)

// asymmetric is a source over an RSA ENCRYPT_DECRYPT key: it wraps locally
// with the public key (no KMS call) and unwraps with KMS Decrypt. With
// client nil it is public-key-only and cannot unwrap.
type asymmetric struct {
	*source
	pub  *rsa.PublicKey
	spec string // "RSA_2048", …
}

var (
	_ keysource.KeySource = (*asymmetric)(nil)
	_ keysource.Describer = (*asymmetric)(nil)
)

// newPublicOnly builds a source from a public key file: no configuration,
// credentials or KMS calls.
func newPublicOnly(ref keyRef, o Options) (*asymmetric, error) {
	if !ref.isARN || ref.alias {
		return nil, fmt.Errorf("awskms: key %s: public-key-only mode needs the key ARN, since no alias can be resolved without KMS "+
			"(`aws kms describe-key --key-id %s --query KeyMetadata.Arn`): %w", ref.raw, ref.raw, keysource.ErrInvalid)
	}
	der, err := os.ReadFile(o.PublicKeyFile)
	if err != nil {
		return nil, fmt.Errorf("awskms: public key of %s: %w: %w", ref.raw, keysource.ErrInvalid, err)
	}
	if b, _ := pem.Decode(der); b != nil {
		der = b.Bytes
	}
	pub, err := parseRSAPublicKey(ref.raw, der)
	if err != nil {
		return nil, err
	}
	s := &source{arn: ref.raw, region: ref.arn.Region, rand: o.Rand}
	s.setVolume(o.VolumeID)
	a := &asymmetric{source: s, pub: pub, spec: fmt.Sprintf("RSA_%d", pub.N.BitLen())}
	if err := a.checkFingerprint(o.PublicKeySHA256, "public key file "+o.PublicKeyFile); err != nil {
		return nil, err
	}
	return a, nil
}

// PublicKeyFingerprint returns "sha256:" and the hex SHA-256 of the
// key's public key as SubjectPublicKeyInfo DER: what `init` records so
// that a public key given later is bound to the key.
func (k *asymmetric) PublicKeyFingerprint() string { return Fingerprint(k.pub) }

// Fingerprint returns "sha256:" and the hex SHA-256 of pub's
// SubjectPublicKeyInfo DER.
func Fingerprint(pub *rsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// checkFingerprint refuses a public key (from where) whose fingerprint is
// not want; an empty want checks nothing.
func (k *asymmetric) checkFingerprint(want, where string) error {
	if want == "" {
		return nil
	}
	if got := k.PublicKeyFingerprint(); got != want {
		return fmt.Errorf("awskms: key %s: the public key from %s has fingerprint %s, but the volume recorded %s at init: "+
			"it is not this key's public key (get it with `aws kms get-public-key --key-id %s`): %w",
			k.arn, where, got, want, k.arn, keysource.ErrInvalid)
	}
	return nil
}

// Wrap encrypts volumeID‖dataKey with RSAES-OAEP-SHA-256 under the public
// key, locally. dataKey stays the caller's.
func (k *asymmetric) Wrap(_ context.Context, dataKey []byte) (keysource.Stanza, error) {
	if err := checkDataKey(k.arn, dataKey); err != nil {
		return keysource.Stanza{}, err
	}
	var msg [rsaPlaintextSize]byte
	copy(msg[:], k.volume[:])
	copy(msg[VolumeIDSize:], dataKey)
	defer zero(msg[:])
	ct, err := rsa.EncryptOAEP(sha256.New(), k.rand, k.pub, msg[:], nil)
	if err != nil {
		return keysource.Stanza{}, fmt.Errorf("awskms: wrap with %s: RSA-OAEP: %w", k.arn, err)
	}
	return keysource.Stanza{Type: Type, KeyID: k.arn, Body: body(kindRSA, ct)}, nil
}

// Unwrap decrypts the stanza with KMS Decrypt (RSAES_OAEP_SHA_256, one call)
// and checks that it was wrapped for this volume. The caller owns the
// result. A public-key-only source returns an error wrapping ErrDenied.
func (k *asymmetric) Unwrap(ctx context.Context, st keysource.Stanza) ([]byte, error) {
	ct, err := k.wrapped(st)
	if err != nil {
		return nil, err
	}
	out, err := k.client.Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob:      ct,
		KeyId:               aws.String(k.arn),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256,
		GrantTokens:         k.grants,
	})
	if err != nil {
		return nil, k.fail(ctx, "Decrypt", k.arn, err)
	}
	pt := out.Plaintext
	defer zero(pt)
	if len(pt) != rsaPlaintextSize || subtle.ConstantTimeCompare(pt[:VolumeIDSize], k.volume[:]) != 1 {
		return nil, fmt.Errorf("awskms: Decrypt %s: the wrapped data key does not belong to this volume, or it is corrupt: %w",
			k.arn, keysource.ErrInvalid)
	}
	return bytes.Clone(pt[VolumeIDSize:]), nil
}

// wrapped returns the RSA ciphertext of st for a KMS call: ErrNotMine if
// st is not this key's, ErrInvalid if it cannot be an RSA wrap under it,
// ErrDenied if this source holds only the public key.
func (k *asymmetric) wrapped(st keysource.Stanza) ([]byte, error) {
	ct, err := k.checkStanza(st, kindRSA)
	if err != nil {
		return nil, err
	}
	if k.client == nil {
		return nil, fmt.Errorf("awskms: unwrap with %s: this host holds only the public key (public-key-only mode): "+
			"files written here can be read only where the KMS key is usable (kms:Decrypt): %w", k.arn, keysource.ErrDenied)
	}
	if len(ct) != k.pub.Size() {
		return nil, fmt.Errorf("awskms: stanza for %s: wrapped key is %d bytes, want %d: %w", k.arn, len(ct), k.pub.Size(), keysource.ErrInvalid)
	}
	return ct, nil
}

// Describe reports the key state; a public-key-only source reports what it
// knows without calling KMS.
func (k *asymmetric) Describe(ctx context.Context) (keysource.KeyState, error) {
	if k.client == nil {
		return keysource.KeyState{
			KeyID: k.arn,
			State: "Unknown",
			Detail: fmt.Sprintf("%s public key only: this host can wrap (write files) but not unwrap (read them); "+
				"the key state is known only to KMS", k.spec),
		}, nil
	}
	return k.source.Describe(ctx)
}

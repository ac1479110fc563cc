package awskms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/keysource"
)

var (
	_ keysource.ReEncrypter = (*symmetric)(nil)
	_ keysource.ReEncrypter = (*asymmetric)(nil)
)

// ReEncrypt moves the symmetric stanza st to the awskms key `to` with one
// KMS ReEncrypt call: KMS decrypts under this key and the volume's
// encryption context and encrypts under `to` and the same context, so the
// data key never leaves KMS. The result is the stanza to.Wrap would have
// made for that data key.
//
// `to` must be a symmetric awskms source of the same volume and Region.
// Otherwise the error wraps keysource.ErrNotMine and the caller falls
// back to Unwrap and Wrap: an RSA stanza holds volumeID‖dataKey and a
// symmetric one the data key alone, so KMS cannot turn one into the other.
// The call needs kms:ReEncryptFrom on this key and kms:ReEncryptTo on `to`,
// both for the credentials of this source.
func (k *symmetric) ReEncrypt(ctx context.Context, st keysource.Stanza, to keysource.KeySource) (keysource.Stanza, error) {
	blob, err := k.checkStanza(st, kindSymmetric)
	if err != nil {
		return keysource.Stanza{}, err
	}
	return k.reEncrypt(ctx, blob, kindSymmetric, to)
}

// ReEncrypt moves the RSA stanza st to the RSA awskms key `to` with one
// KMS ReEncrypt call (RSAES_OAEP_SHA_256 on both sides). `to` may be
// public-key-only: KMS holds its private half. RSA takes no encryption
// context, so KMS cannot check the volume ID inside the wrap; it travels
// unchanged, and the destination's Unwrap checks it as it checks any RSA
// stanza. The rest is as for a symmetric key, ErrNotMine included; a
// public-key-only source cannot re-encrypt (ErrDenied), as it cannot
// unwrap.
func (k *asymmetric) ReEncrypt(ctx context.Context, st keysource.Stanza, to keysource.KeySource) (keysource.Stanza, error) {
	ct, err := k.wrapped(st)
	if err != nil {
		return keysource.Stanza{}, err
	}
	return k.reEncrypt(ctx, ct, kindRSA, to)
}

// target returns the source behind `to` and the body kind its Wrap
// writes, or ok false if `to` is no awskms source.
func target(to keysource.KeySource) (dst *source, kind byte, rsaSize int, ok bool) {
	switch d := to.(type) {
	case *symmetric:
		return d.source, kindSymmetric, 0, true
	case *asymmetric:
		return d.source, kindRSA, d.pub.Size(), true
	}
	return nil, 0, 0, false
}

// reEncrypt sends wrapped, a body of kind, to `to` with KMS ReEncrypt.
func (s *source) reEncrypt(ctx context.Context, wrapped []byte, kind byte, to keysource.KeySource) (keysource.Stanza, error) {
	dst, dkind, rsaSize, ok := target(to)
	if !ok {
		return keysource.Stanza{}, fmt.Errorf("awskms: re-encrypt from %s to %s:%s: not an AWS KMS key: %w",
			s.arn, to.Type(), to.KeyID(), keysource.ErrNotMine)
	}
	why := ""
	switch {
	case s.forDescribe || dst.forDescribe:
		why = "a key opened only to describe it"
	case dst.volume != s.volume:
		why = "the destination is bound to another volume"
	case dst.region != s.region:
		why = fmt.Sprintf("the destination is in region %s and ReEncrypt runs in %s", dst.region, s.region)
	case dkind != kind:
		why = fmt.Sprintf("a %s stanza cannot become a %s one inside KMS (an RSA wrap holds volume ID and data key, a symmetric one the data key alone)",
			kindName(kind), kindName(dkind))
	case len(mergeGrants(s.grants, dst.grants)) > maxGrantTokens:
		why = fmt.Sprintf("the two keys' grant tokens are more than the %d one request takes", maxGrantTokens)
	}
	if why != "" {
		return keysource.Stanza{}, fmt.Errorf("awskms: re-encrypt from %s to %s: %s: %w", s.arn, dst.arn, why, keysource.ErrNotMine)
	}

	in := &kms.ReEncryptInput{
		CiphertextBlob:   wrapped,
		SourceKeyId:      aws.String(s.arn),
		DestinationKeyId: aws.String(dst.arn),
		GrantTokens:      mergeGrants(s.grants, dst.grants),
	}
	if kind == kindSymmetric {
		in.SourceEncryptionAlgorithm = types.EncryptionAlgorithmSpecSymmetricDefault
		in.SourceEncryptionContext = s.encCtx
		in.DestinationEncryptionAlgorithm = types.EncryptionAlgorithmSpecSymmetricDefault
		in.DestinationEncryptionContext = dst.encCtx
	} else {
		in.SourceEncryptionAlgorithm = types.EncryptionAlgorithmSpecRsaesOaepSha256
		in.DestinationEncryptionAlgorithm = types.EncryptionAlgorithmSpecRsaesOaepSha256
	}
	out, err := s.client.ReEncrypt(ctx, in)
	if err != nil {
		return keysource.Stanza{}, s.failReEncrypt(ctx, dst.arn, err)
	}
	// KMS answers with the keys it used; a planted stanza whose key ID
	// names this key over another key's ciphertext must not pass as
	// this key's.
	if src := aws.ToString(out.SourceKeyId); src != "" && src != s.arn && !SameKey(src, s.arn) {
		return keysource.Stanza{}, fmt.Errorf("awskms: ReEncrypt %s: the stanza's wrapped data key was made under key %s, not the key the stanza names: %w",
			s.arn, src, keysource.ErrInvalid)
	}
	if got := aws.ToString(out.KeyId); got != "" && got != dst.arn && !SameKey(got, dst.arn) {
		return keysource.Stanza{}, fmt.Errorf("awskms: ReEncrypt %s: KMS re-encrypted under %s, not %s: %w", s.arn, got, dst.arn, keysource.ErrInvalid)
	}
	blob := out.CiphertextBlob
	if len(blob) == 0 || len(blob) > maxCiphertext || (kind == kindRSA && len(blob) != rsaSize) {
		return keysource.Stanza{}, fmt.Errorf("awskms: ReEncrypt %s to %s: answer of unexpected shape (%d-byte ciphertext): %w",
			s.arn, dst.arn, len(blob), keysource.ErrInvalid)
	}
	return keysource.Stanza{Type: Type, KeyID: dst.arn, Body: body(kind, blob)}, nil
}

// failReEncrypt explains a failed ReEncrypt from s's key to dst. KMS names
// the key at fault in its message (the resource of a denial, the key that
// is disabled), so the explanation names that key, and a denial says which
// of the two permissions the call lacked.
func (s *source) failReEncrypt(ctx context.Context, dst string, err error) error {
	op, key := "ReEncrypt", s.arn
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch msg := apiErr.ErrorMessage(); {
		case strings.Contains(msg, "kms:ReEncryptTo"):
			op, key = "ReEncryptTo", dst
		case strings.Contains(msg, "kms:ReEncryptFrom"):
			op = "ReEncryptFrom"
		case dst != s.arn && strings.Contains(msg, dst):
			key = dst
		}
	}
	return s.fail(ctx, op, key, err)
}

// mergeGrants returns the grant tokens of both keys, each once.
func mergeGrants(a, b []string) []string {
	out := slices.Clone(a)
	for _, g := range b {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}

package awskms

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/keysource"
)

// describeOnly calls DescribeKey and returns its metadata or the SDK error.
func (s *source) describeOnly(ctx context.Context, key string, optFns ...func(*kms.Options)) (*types.KeyMetadata, error) {
	out, err := s.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(key), GrantTokens: s.grants}, optFns...)
	if err != nil {
		return nil, err
	}
	if out.KeyMetadata == nil || aws.ToString(out.KeyMetadata.Arn) == "" {
		return nil, fmt.Errorf("awskms: DescribeKey %s: answer without key metadata: %w", key, keysource.ErrInvalid)
	}
	return out.KeyMetadata, nil
}

// describe calls DescribeKey and explains any failure.
func (s *source) describe(ctx context.Context, key string) (*types.KeyMetadata, error) {
	md, err := s.describeOnly(ctx, key)
	if err != nil {
		return nil, s.fail(ctx, "DescribeKey", key, err)
	}
	return md, nil
}

// checkKey refuses a resolved key that kmsfs cannot use: another region
// than the client's, a usage or spec that cannot wrap data keys, or a state
// that forbids use.
func (s *source) checkKey(given string, md *types.KeyMetadata) error {
	if r := keyARNRegion(s.arn); r != s.region {
		return wrongRegion(s.arn, r, s.region)
	}
	named := s.arn
	if given != s.arn {
		named = fmt.Sprintf("%s (%s)", s.arn, given)
	}
	if md.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
		return fmt.Errorf("awskms: key %s has key usage %s: kmsfs needs a key with usage ENCRYPT_DECRYPT, "+
			"because it encrypts (wraps) data keys; %s keys cannot encrypt: %w",
			named, md.KeyUsage, md.KeyUsage, keysource.ErrInvalid)
	}
	if msg, kind := stateProblem(s.arn, md); kind != nil {
		return fmt.Errorf("awskms: key %s: %s: %w", named, msg, kind)
	}
	switch spec := md.KeySpec; {
	case spec == types.KeySpecSymmetricDefault:
	case isRSA(spec):
		if algs := md.EncryptionAlgorithms; len(algs) > 0 && !slices.Contains(algs, types.EncryptionAlgorithmSpecRsaesOaepSha256) {
			return fmt.Errorf("awskms: key %s does not offer RSAES_OAEP_SHA_256: %w", named, keysource.ErrInvalid)
		}
	default:
		return fmt.Errorf("awskms: key %s has key spec %s: kmsfs wraps data keys with SYMMETRIC_DEFAULT or RSA_2048/3072/4096 keys only: %w",
			named, spec, keysource.ErrInvalid)
	}
	return nil
}

func isRSA(spec types.KeySpec) bool { return strings.HasPrefix(string(spec), "RSA_") }

// publicKey fetches the RSA public key of an asymmetric key once, at Open.
func (s *source) publicKey(ctx context.Context) (*rsa.PublicKey, error) {
	out, err := s.client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(s.arn), GrantTokens: s.grants})
	if err != nil {
		return nil, s.fail(ctx, "GetPublicKey", s.arn, err)
	}
	// GetPublicKey says what the key is for; a public key that cannot
	// wrap with RSAES_OAEP_SHA_256 would make files no Decrypt opens.
	if u := out.KeyUsage; u != "" && u != types.KeyUsageTypeEncryptDecrypt {
		return nil, fmt.Errorf("awskms: GetPublicKey %s: key usage %s, want ENCRYPT_DECRYPT: %w", s.arn, u, keysource.ErrInvalid)
	}
	if ks := out.KeySpec; ks != "" && !isRSA(ks) {
		return nil, fmt.Errorf("awskms: GetPublicKey %s: key spec %s, want RSA_*: %w", s.arn, ks, keysource.ErrInvalid)
	}
	if algs := out.EncryptionAlgorithms; len(algs) > 0 && !slices.Contains(algs, types.EncryptionAlgorithmSpecRsaesOaepSha256) {
		return nil, fmt.Errorf("awskms: GetPublicKey %s: the key does not offer RSAES_OAEP_SHA_256 (it offers %v): %w", s.arn, algs, keysource.ErrInvalid)
	}
	return parseRSAPublicKey(s.arn, out.PublicKey)
}

func parseRSAPublicKey(arn string, der []byte) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("awskms: public key of %s: not SubjectPublicKeyInfo DER: %w", arn, keysource.ErrInvalid)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("awskms: public key of %s is %T, want RSA: %w", arn, k, keysource.ErrInvalid)
	}
	if pub.N.BitLen() < minRSABits {
		return nil, fmt.Errorf("awskms: public key of %s has %d bits, want at least %d: %w", arn, pub.N.BitLen(), minRSABits, keysource.ErrInvalid)
	}
	return pub, nil
}

// Describe reports the key's state as KMS sees it now (one DescribeKey
// call).
func (s *source) Describe(ctx context.Context) (keysource.KeyState, error) {
	md, err := s.describe(ctx, s.arn)
	if err != nil {
		return keysource.KeyState{}, err
	}
	msg, problem := stateProblem(s.arn, md)
	st := keysource.KeyState{
		KeyID:  aws.ToString(md.Arn),
		State:  string(md.KeyState),
		Usable: problem == nil && md.KeyUsage == types.KeyUsageTypeEncryptDecrypt,
	}
	detail := []string{fmt.Sprintf("%s %s key", md.KeySpec, md.KeyUsage)}
	if md.DeletionDate != nil {
		st.Deletes = *md.DeletionDate
		detail = append(detail, "pending deletion, to be deleted on "+md.DeletionDate.UTC().Format(time.RFC3339))
	}
	if msg != "" && md.KeyState != types.KeyStatePendingDeletion {
		detail = append(detail, msg)
	}
	st.Detail = strings.Join(detail, "; ")
	return st, nil
}

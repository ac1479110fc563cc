package awskms

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/keysource"
)

// symmetric is a source over a SYMMETRIC_DEFAULT key: every wrap and unwrap
// is one KMS call under the volume's encryption context.
type symmetric struct{ *source }

var (
	_ keysource.KeySource = (*symmetric)(nil)
	_ keysource.Generator = (*symmetric)(nil)
	_ keysource.Describer = (*symmetric)(nil)
)

// GenerateDataKey asks KMS for a fresh AES-256 data key under the volume's
// encryption context (one GenerateDataKey call). The caller owns dataKey.
func (k *symmetric) GenerateDataKey(ctx context.Context) ([]byte, keysource.Stanza, error) {
	out, err := k.client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(k.arn),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: k.encCtx,
		GrantTokens:       k.grants,
	})
	if err != nil {
		return nil, keysource.Stanza{}, k.fail(ctx, "GenerateDataKey", k.arn, err)
	}
	if len(out.Plaintext) != keysource.DataKeySize || len(out.CiphertextBlob) == 0 {
		zero(out.Plaintext)
		return nil, keysource.Stanza{}, fmt.Errorf("awskms: GenerateDataKey %s: answer of unexpected shape: %w", k.arn, keysource.ErrInvalid)
	}
	return out.Plaintext, k.stanza(out.CiphertextBlob), nil
}

// Wrap encrypts dataKey under the key and the volume's encryption context
// (one Encrypt call). dataKey stays the caller's.
func (k *symmetric) Wrap(ctx context.Context, dataKey []byte) (keysource.Stanza, error) {
	if err := checkDataKey(k.arn, dataKey); err != nil {
		return keysource.Stanza{}, err
	}
	out, err := k.client.Encrypt(ctx, &kms.EncryptInput{
		KeyId:             aws.String(k.arn),
		Plaintext:         dataKey,
		EncryptionContext: k.encCtx,
		GrantTokens:       k.grants,
	})
	if err != nil {
		return keysource.Stanza{}, k.fail(ctx, "Encrypt", k.arn, err)
	}
	if len(out.CiphertextBlob) == 0 {
		return keysource.Stanza{}, fmt.Errorf("awskms: Encrypt %s: empty ciphertext: %w", k.arn, keysource.ErrInvalid)
	}
	return k.stanza(out.CiphertextBlob), nil
}

func (k *symmetric) stanza(blob []byte) keysource.Stanza {
	return keysource.Stanza{Type: Type, KeyID: k.arn, Body: body(kindSymmetric, blob)}
}

// Unwrap decrypts the stanza with KMS (one Decrypt call naming the key, so
// KMS refuses a ciphertext of another key, and under the volume's
// encryption context, so it refuses one of another volume). The caller
// owns the result.
func (k *symmetric) Unwrap(ctx context.Context, st keysource.Stanza) ([]byte, error) {
	blob, err := k.checkStanza(st, kindSymmetric)
	if err != nil {
		return nil, err
	}
	out, err := k.client.Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob:      blob,
		KeyId:               aws.String(k.arn),
		EncryptionContext:   k.encCtx,
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
		GrantTokens:         k.grants,
	})
	if err != nil {
		return nil, k.fail(ctx, "Decrypt", k.arn, err)
	}
	if len(out.Plaintext) != keysource.DataKeySize || (out.KeyId != nil && *out.KeyId != k.arn) {
		zero(out.Plaintext)
		return nil, fmt.Errorf("awskms: Decrypt %s: the stanza does not hold a data key of this key: %w", k.arn, keysource.ErrInvalid)
	}
	return out.Plaintext, nil
}

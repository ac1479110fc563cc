package kmstest

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"hash"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

// EmulateRSAReEncrypt makes the proxy answer a ReEncrypt whose source or
// destination algorithm is RSAES_OAEP_*, which local-kms does not
// implement (it answers InternalFailureException, and misreads an RSA
// ciphertext as a symmetric one), the way the KMS API reference describes:
// Decrypt under SourceKeyId (required for an RSA source) with the source
// algorithm and context, then encrypt under DestinationKeyId, with the
// destination's public key for RSA (which takes no encryption context) or
// with the emulator's Encrypt for a symmetric key. Errors of those steps
// are answered as KMS exceptions. The proxy counts the ReEncrypt as one
// request and its inner calls not at all; a ReEncrypt between symmetric
// keys still goes to the emulator.
func (p *Proxy) EmulateRSAReEncrypt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rsaReEncrypt = kms.NewFromConfig(aws.Config{
		Region:           Region,
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDKMSFSTEST", "kmsfs-test-secret", ""),
		BaseEndpoint:     aws.String(p.target),
		RetryMaxAttempts: 1,
	})
}

// reEncryptRequest is the JSON body of a ReEncrypt request.
type reEncryptRequest struct {
	CiphertextBlob                 []byte
	SourceKeyId                    string
	DestinationKeyId               string
	SourceEncryptionAlgorithm      string
	DestinationEncryptionAlgorithm string
	SourceEncryptionContext        map[string]string
	DestinationEncryptionContext   map[string]string
}

// emulatedReEncrypt answers r if it is a ReEncrypt the proxy emulates,
// and reports whether it did.
func (p *Proxy) emulatedReEncrypt(w http.ResponseWriter, r *http.Request, op string, body []byte) bool {
	p.mu.Lock()
	client := p.rsaReEncrypt
	p.mu.Unlock()
	if client == nil || op != "ReEncrypt" {
		return false
	}
	var in reEncryptRequest
	if json.Unmarshal(body, &in) != nil ||
		(!strings.HasPrefix(in.SourceEncryptionAlgorithm, "RSAES_") && !strings.HasPrefix(in.DestinationEncryptionAlgorithm, "RSAES_")) {
		return false
	}
	out, err := reEncryptRSA(r.Context(), client, in)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if err != nil {
		code, msg := "KMSInternalException", err.Error()
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) {
			code, msg = apiErr.ErrorCode(), apiErr.ErrorMessage()
		}
		b, _ := json.Marshal(map[string]string{"__type": code, "message": msg})
		w.WriteHeader(ErrorStatus(code))
		w.Write(b)
		return true
	}
	b, _ := json.Marshal(out)
	w.Write(b)
	return true
}

// reEncryptRSA performs in through client, in the two steps KMS takes.
func reEncryptRSA(ctx context.Context, client *kms.Client, in reEncryptRequest) (map[string]any, error) {
	srcAlg := cmp.Or(in.SourceEncryptionAlgorithm, "SYMMETRIC_DEFAULT")
	dstAlg := cmp.Or(in.DestinationEncryptionAlgorithm, "SYMMETRIC_DEFAULT")
	switch {
	case strings.HasPrefix(srcAlg, "RSAES_") && in.SourceKeyId == "":
		return nil, validation("SourceKeyId is required to decrypt a ciphertext of an asymmetric KMS key")
	case strings.HasPrefix(srcAlg, "RSAES_") && len(in.SourceEncryptionContext) > 0,
		strings.HasPrefix(dstAlg, "RSAES_") && len(in.DestinationEncryptionContext) > 0:
		return nil, validation("an asymmetric KMS key takes no encryption context")
	}
	dec, err := client.Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob:      in.CiphertextBlob,
		KeyId:               optional(in.SourceKeyId),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpec(srcAlg),
		EncryptionContext:   in.SourceEncryptionContext,
	})
	if err != nil {
		return nil, err
	}
	var blob []byte
	var keyID string
	if strings.HasPrefix(dstAlg, "RSAES_") {
		pk, err := client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(in.DestinationKeyId)})
		if err != nil {
			return nil, err
		}
		if pk.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
			return nil, &smithy.GenericAPIError{Code: "InvalidKeyUsageException", Message: in.DestinationKeyId + " key usage is not valid for ReEncrypt."}
		}
		pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
		rsaPub, ok := pub.(*rsa.PublicKey)
		if err != nil || !ok {
			return nil, &smithy.GenericAPIError{Code: "InvalidKeyUsageException", Message: in.DestinationKeyId + " is not an RSA key."}
		}
		var h hash.Hash
		switch dstAlg {
		case "RSAES_OAEP_SHA_256":
			h = sha256.New()
		case "RSAES_OAEP_SHA_1":
			h = sha1.New()
		default:
			return nil, validation("unknown DestinationEncryptionAlgorithm " + dstAlg)
		}
		if blob, err = rsa.EncryptOAEP(h, rand.Reader, rsaPub, dec.Plaintext, nil); err != nil {
			return nil, validation("plaintext too long for the destination key: " + err.Error())
		}
		keyID = aws.ToString(pk.KeyId)
	} else {
		enc, err := client.Encrypt(ctx, &kms.EncryptInput{
			KeyId:             aws.String(in.DestinationKeyId),
			Plaintext:         dec.Plaintext,
			EncryptionContext: in.DestinationEncryptionContext,
		})
		if err != nil {
			return nil, err
		}
		blob, keyID = enc.CiphertextBlob, aws.ToString(enc.KeyId)
	}
	clear(dec.Plaintext)
	return map[string]any{
		"CiphertextBlob":                 blob,
		"KeyId":                          keyID,
		"SourceKeyId":                    aws.ToString(dec.KeyId),
		"SourceEncryptionAlgorithm":      srcAlg,
		"DestinationEncryptionAlgorithm": dstAlg,
	}, nil
}

func validation(msg string) error {
	return &smithy.GenericAPIError{Code: "ValidationException", Message: msg}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}

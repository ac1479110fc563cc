//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// oaepMechanism returns CKM_RSA_PKCS_OAEP with hash h (hashSHA1 or
// hashSHA256) for OAEP and MGF1 and an empty label. SoftHSM refuses a
// label, any hash but SHA-1, and a source other than CKZ_DATA_SPECIFIED,
// all with CKR_ARGUMENTS_BAD.
func oaepMechanism(h byte) []*p11.Mechanism {
	alg, mgf := uint(p11.CKM_SHA_1), uint(p11.CKG_MGF1_SHA1)
	if h == hashSHA256 {
		alg, mgf = p11.CKM_SHA256, p11.CKG_MGF1_SHA256
	}
	params := p11.NewOAEPParams(alg, mgf, p11.CKZ_DATA_SPECIFIED, nil)
	return []*p11.Mechanism{p11.NewMechanism(p11.CKM_RSA_PKCS_OAEP, params)}
}

func newHash(h byte) hash.Hash {
	if h == hashSHA256 {
		return sha256.New()
	}
	return sha1.New()
}

// errProbed ends the OAEP probe's call: the probe leaves a decryption
// active, so its session must be closed rather than pooled, which a
// failed call does.
var errProbed = errors.New("pkcs11: OAEP probe done")

// probeOAEP picks SHA-256 for OAEP if the token accepts it for decryption,
// and SHA-1 only if the token definitely refuses SHA-256 (the mechanism or
// its parameters are invalid): any other failure, such as a lost session
// or a busy device, fails the call rather than settling on SHA-1 for
// every stanza the Source writes.
func (s *Source) probeOAEP(ctx context.Context) error {
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		h, err := oaepHashFor(s.ck().DecryptInit(sh, oaepMechanism(hashSHA256), key))
		if err != nil {
			return tokenErr("RSA-OAEP SHA-256 probe", s.uri.Token, err)
		}
		s.hash = h
		if h == hashSHA256 {
			return errProbed
		}
		return nil
	})
	if err != nil && !errors.Is(err, errProbed) {
		return err
	}
	name := "SHA-256"
	if s.hash == hashSHA1 {
		name = "SHA-1 (the token offers no SHA-256)"
	}
	s.detail = fmt.Sprintf("RSA-%d key pair %q on token %q; wraps with RSA-OAEP %s", s.pub.N.BitLen(), s.uri.Object, s.uri.Token, name)
	return nil
}

// oaepHashFor turns the token's answer to C_DecryptInit with SHA-256 OAEP
// into the hash to use: SHA-256 when it took it, SHA-1 when it refused
// the mechanism or its parameters, and the error itself otherwise.
func oaepHashFor(err error) (byte, error) {
	switch {
	case err == nil:
		return hashSHA256, nil
	case paramRefused(err):
		return hashSHA1, nil
	}
	return 0, err
}

// wrapRSA encrypts V ‖ K with the public key in Go.
func (s *Source) wrapRSA(dataKey []byte) ([]byte, error) {
	v := s.bound(dataKey)
	defer clear(v)
	ct, err := rsa.EncryptOAEP(newHash(s.hash), s.rand, s.pub, v, nil)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: RSA-OAEP wrap for %s: %w", s.keyID, err)
	}
	b := append(newBody(kindRSA, s.fp, 1+len(ct)), s.hash)
	return append(b, ct...), nil
}

// unwrapRSA decrypts with the private key on the token, using the hash
// the stanza names.
func (s *Source) unwrapRSA(ctx context.Context, bd body) ([]byte, error) {
	if len(bd.data) != s.pub.Size() {
		return nil, fmt.Errorf("pkcs11: RSA stanza of %d bytes for an RSA-%d key: %w", len(bd.data), s.pub.N.BitLen(), keysource.ErrInvalid)
	}
	h := bd.hash
	var v []byte
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		c := s.ck()
		if err := c.DecryptInit(sh, oaepMechanism(h), key); err != nil {
			if h == hashSHA256 && s.hash != hashSHA256 {
				return fmt.Errorf("pkcs11: stanza needs RSA-OAEP with SHA-256, which token %q does not offer: %w", s.uri.Token, keysource.ErrInvalid)
			}
			return tokenErr("RSA-OAEP unwrap", s.uri.Token, err)
		}
		pt, err := c.Decrypt(sh, bd.data)
		if err != nil {
			return unwrapErr(s.uri.Token, err)
		}
		v = pt
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.openBound(v)
}

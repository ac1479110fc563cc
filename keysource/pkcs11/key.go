//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// minRSABits is the smallest RSA modulus a Source accepts.
const minRSABits = 2048

// errKeyGone says the key the Source was opened on is no longer on the
// token.
var errKeyGone = errors.New("pkcs11: the key is no longer on the token")

// findKey finds the object the URI names and sets up the Source for it.
func (s *Source) findKey(ctx context.Context, wrap string) error {
	err := withRecovery(ctx, s.tok, s.uri, s.pin, func(gen uint64) error {
		return s.pool.do(ctx, func(sh p11.SessionHandle) error {
			if err := s.loggedIn(sh); err != nil {
				return err
			}
			s.keyGen = gen
			return s.setup(sh, wrap)
		})
	})
	if err != nil || s.kind != keyRSA {
		return err
	}
	return s.probeOAEP(ctx)
}

// lookup returns the secret and private keys the URI names.
func (s *Source) lookup(sh p11.SessionHandle) (secret, private []p11.ObjectHandle, err error) {
	if s.uri.ObjectType == "" || s.uri.ObjectType == TypeSecretKey {
		if secret, err = s.find(sh, p11.CKO_SECRET_KEY); err != nil {
			return nil, nil, err
		}
	}
	if s.uri.ObjectType != TypeSecretKey {
		if private, err = s.find(sh, p11.CKO_PRIVATE_KEY); err != nil {
			return nil, nil, err
		}
	}
	return secret, private, nil
}

func (s *Source) setup(sh p11.SessionHandle, wrap string) error {
	secret, private, err := s.lookup(sh)
	if err != nil {
		return err
	}
	switch n := len(secret) + len(private); {
	case n == 0:
		return fmt.Errorf("pkcs11: token %q has no %s: %w: %w", s.uri.Token, s.objectName(), ErrKeyMissing, keysource.ErrInvalid)
	case len(secret) > 0 && len(private) > 0:
		return fmt.Errorf("pkcs11: token %q has both a secret key and a private key as %s; add type=secret-key or type=private to the URI: %w",
			s.uri.Token, s.objectName(), keysource.ErrInvalid)
	case n > 1:
		return fmt.Errorf("pkcs11: token %q has %d keys as %s; add id=… to the URI: %w", s.uri.Token, n, s.objectName(), keysource.ErrInvalid)
	case len(secret) == 1:
		return s.setupAES(sh, secret[0], wrap)
	default:
		if wrap != "" {
			return fmt.Errorf("pkcs11: wrap=%s is for AES keys; %s on token %q is an RSA key pair: %w", wrap, s.objectName(), s.uri.Token, keysource.ErrInvalid)
		}
		return s.setupRSA(sh, private[0])
	}
}

// loggedIn fails with a lost login when sh is not logged in. A session
// without the login finds no private objects, and that is not a missing
// key: the token dropped the login. Asked before a search, since a drop
// after it also invalidates the session, which the search then reports.
func (s *Source) loggedIn(sh p11.SessionHandle) error {
	si, err := s.ck().GetSessionInfo(sh)
	if err == nil && si.State != p11.CKS_RO_USER_FUNCTIONS && si.State != p11.CKS_RW_USER_FUNCTIONS {
		if s.tok.needsLogin() {
			err = p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
	}
	if err != nil {
		return tokenErr("session state", s.uri.Token, err)
	}
	return nil
}

// refind finds the key again after the token dropped its sessions, and
// checks it is the key the Source was opened on.
func (s *Source) refind(sh p11.SessionHandle) (p11.ObjectHandle, error) {
	if err := s.loggedIn(sh); err != nil {
		return 0, err
	}
	secret, private, err := s.lookup(sh)
	if err != nil {
		return 0, err
	}
	hs := private
	if s.kind == keyAES {
		hs = secret
	}
	if len(hs) != 1 {
		return 0, fmt.Errorf("pkcs11: token %q now has %d keys as %s: %w: %w", s.uri.Token, len(hs), s.objectName(), errKeyGone, keysource.ErrInvalid)
	}
	if s.kind == keyAES && len(s.fp) > 0 {
		fp, err := s.checkValue(sh, hs[0])
		if err != nil {
			return 0, err
		}
		if subtle.ConstantTimeCompare(fp, s.fp) != 1 {
			return 0, fmt.Errorf("pkcs11: %s on token %q is another key now (fingerprint %x, was %x): %w: %w",
				s.objectName(), s.uri.Token, fp, s.fp, errKeyGone, keysource.ErrInvalid)
		}
	}
	return hs[0], nil
}

// find returns the handles of the objects of class with the URI's label
// and id.
func (s *Source) find(sh p11.SessionHandle, class uint) ([]p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, class),
		p11.NewAttribute(p11.CKA_LABEL, s.uri.Object),
	}
	if s.uri.ID != nil {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_ID, s.uri.ID))
	}
	c := s.ck()
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		return nil, tokenErr("find objects", s.uri.Token, err)
	}
	hs, _, err := c.FindObjects(sh, 8)
	if e := c.FindObjectsFinal(sh); err == nil {
		err = e
	}
	if err != nil {
		return nil, tokenErr("find objects", s.uri.Token, err)
	}
	return hs, nil
}

func (s *Source) objectName() string {
	if s.uri.ID != nil {
		return fmt.Sprintf("key labelled %q with id %x", s.uri.Object, s.uri.ID)
	}
	return fmt.Sprintf("key labelled %q", s.uri.Object)
}

// checkValue returns the AES key's CKA_CHECK_VALUE, or nil when the token
// does not show one. A lost session is an error, not a missing value.
func (s *Source) checkValue(sh p11.SessionHandle, h p11.ObjectHandle) ([]byte, error) {
	a, err := s.ck().GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_CHECK_VALUE, nil)})
	switch {
	case lost(err):
		return nil, tokenErr("read the key's check value", s.uri.Token, err)
	case err != nil || len(a[0].Value) == 0 || len(a[0].Value) > maxFPSize:
		return nil, nil
	}
	return a[0].Value, nil
}

// refuseAlwaysAuthenticate fails for a key that wants the PIN again before
// each use: kmsfs runs unattended and keeps no PIN to enter.
func (s *Source) refuseAlwaysAuthenticate(sh p11.SessionHandle, h p11.ObjectHandle) error {
	a, err := s.ck().GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_ALWAYS_AUTHENTICATE, nil)})
	if lost(err) {
		return tokenErr("read key attributes", s.uri.Token, err)
	}
	if err != nil || len(a[0].Value) != 1 || a[0].Value[0] == 0 {
		return nil
	}
	return fmt.Errorf("pkcs11: %s on token %q has CKA_ALWAYS_AUTHENTICATE set: the token would ask for the PIN before every use, "+
		"which kmsfs, running unattended, cannot answer; use a key without it: %w", s.objectName(), s.uri.Token, keysource.ErrInvalid)
}

func (s *Source) setupAES(sh p11.SessionHandle, h p11.ObjectHandle, wrap string) error {
	a, err := s.ck().GetAttributeValue(sh, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
	})
	if err != nil {
		return tokenErr("read key attributes", s.uri.Token, err)
	}
	if kt := attrUint(a[0]); kt != p11.CKK_AES {
		return fmt.Errorf("pkcs11: %s on token %q is a secret key of type %#x, not AES: %w",
			s.objectName(), s.uri.Token, kt, keysource.ErrInvalid)
	}
	if err := s.refuseAlwaysAuthenticate(sh, h); err != nil {
		return err
	}
	s.kind, s.key = keyAES, h
	if s.fp, err = s.checkValue(sh, h); err != nil {
		return err
	}
	perm, err := s.perms(sh, h, p11.CKA_ENCRYPT, p11.CKA_DECRYPT, p11.CKA_WRAP, p11.CKA_UNWRAP)
	if err != nil {
		return err
	}
	gcm := perm[0] && perm[1] && s.mechanism(p11.CKM_AES_GCM, p11.CKF_ENCRYPT|p11.CKF_DECRYPT)
	if perm[2] && perm[3] {
		if s.kwpMech, err = s.chooseKWP(sh); err != nil {
			return err
		}
	}
	kwp := s.kwpMech != 0
	switch {
	case gcm && wrap != WrapKWP:
		s.aesMode = kindGCM
	case wrap == WrapGCM:
		return fmt.Errorf("pkcs11: wrap=gcm asked for, but token %q lacks CKM_AES_GCM or %s does not allow encrypt and decrypt: %w",
			s.uri.Token, s.objectName(), keysource.ErrInvalid)
	case kwp:
		s.aesMode = kindKWP
	case wrap == WrapKWP:
		return fmt.Errorf("pkcs11: wrap=kwp asked for, but token %q offers no RFC 5649 key wrap (CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD or a vendor's) or %s does not allow wrap and unwrap: %w",
			s.uri.Token, s.objectName(), keysource.ErrInvalid)
	default:
		return fmt.Errorf("pkcs11: token %q offers neither AES-GCM with encrypt and decrypt nor AES key wrap (RFC 5649) with wrap and unwrap for %s: %w",
			s.uri.Token, s.objectName(), keysource.ErrInvalid)
	}
	mech := "AES-GCM"
	if s.aesMode == kindKWP {
		mech = fmt.Sprintf("AES key wrap with padding (RFC 5649, mechanism %#x)", s.kwpMech)
	}
	s.detail = fmt.Sprintf("AES-%d secret key %q on token %q; wraps with %s", 8*attrUint(a[1]), s.uri.Object, s.uri.Token, mech)
	return nil
}

func (s *Source) setupRSA(sh p11.SessionHandle, h p11.ObjectHandle) error {
	a, err := s.ck().GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return tokenErr("read key attributes", s.uri.Token, err)
	}
	if kt := attrUint(a[0]); kt != p11.CKK_RSA {
		return fmt.Errorf("pkcs11: %s on token %q is a private key of type %#x; kmsfs takes RSA key pairs and AES keys: %w",
			s.objectName(), s.uri.Token, kt, keysource.ErrInvalid)
	}
	if err := s.refuseAlwaysAuthenticate(sh, h); err != nil {
		return err
	}
	s.kind, s.key = keyRSA, h
	perm, err := s.perms(sh, h, p11.CKA_DECRYPT)
	if err != nil {
		return err
	}
	if !perm[0] {
		return fmt.Errorf("pkcs11: private %s on token %q does not allow decrypt (CKA_DECRYPT): %w", s.objectName(), s.uri.Token, keysource.ErrInvalid)
	}
	if !s.mechanism(p11.CKM_RSA_PKCS_OAEP, p11.CKF_DECRYPT) {
		return fmt.Errorf("pkcs11: token %q does not offer RSA-OAEP decryption: %w", s.uri.Token, keysource.ErrInvalid)
	}
	pub, err := s.publicKey(sh, h)
	if err != nil {
		return err
	}
	if pub.N.BitLen() < minRSABits {
		return fmt.Errorf("pkcs11: %s on token %q is RSA-%d; kmsfs needs at least RSA-%d: %w",
			s.objectName(), s.uri.Token, pub.N.BitLen(), minRSABits, keysource.ErrInvalid)
	}
	s.pub = pub
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("pkcs11: %s on token %q: public key: %w", s.objectName(), s.uri.Token, err)
	}
	sum := sha256.Sum256(der)
	s.fp = sum[:]
	return nil
}

// publicKey reads the modulus and exponent from the private key, or from
// the public key of the same label and id on tokens that do not show them
// on the private key.
func (s *Source) publicKey(sh p11.SessionHandle, priv p11.ObjectHandle) (*rsa.PublicKey, error) {
	tmpl := func() []*p11.Attribute {
		return []*p11.Attribute{p11.NewAttribute(p11.CKA_MODULUS, nil), p11.NewAttribute(p11.CKA_PUBLIC_EXPONENT, nil)}
	}
	a, err := s.ck().GetAttributeValue(sh, priv, tmpl())
	if err != nil || len(a[0].Value) == 0 || len(a[1].Value) == 0 {
		pubs, ferr := s.find(sh, p11.CKO_PUBLIC_KEY)
		if ferr != nil {
			return nil, ferr
		}
		if len(pubs) != 1 {
			return nil, fmt.Errorf("pkcs11: token %q shows no modulus on private %s and has %d public keys of that label: %w",
				s.uri.Token, s.objectName(), len(pubs), keysource.ErrInvalid)
		}
		if a, err = s.ck().GetAttributeValue(sh, pubs[0], tmpl()); err != nil {
			return nil, tokenErr("read public key", s.uri.Token, err)
		}
	}
	e := new(big.Int).SetBytes(a[1].Value)
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("pkcs11: %s on token %q has an unusable public exponent: %w", s.objectName(), s.uri.Token, keysource.ErrInvalid)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(a[0].Value), E: int(e.Int64())}, nil
}

// perms reads boolean attributes of the key.
func (s *Source) perms(sh p11.SessionHandle, key p11.ObjectHandle, types ...uint) ([]bool, error) {
	tmpl := make([]*p11.Attribute, len(types))
	for i, t := range types {
		tmpl[i] = p11.NewAttribute(t, nil)
	}
	a, err := s.ck().GetAttributeValue(sh, key, tmpl)
	if err != nil {
		return nil, tokenErr("read key attributes", s.uri.Token, err)
	}
	out := make([]bool, len(a))
	for i := range a {
		out[i] = len(a[i].Value) == 1 && a[i].Value[0] != 0
	}
	return out, nil
}

// permitted reports whether the key still allows what the Source does.
func (s *Source) permitted(sh p11.SessionHandle, key p11.ObjectHandle) (bool, error) {
	types, _ := s.needs()
	perm, err := s.perms(sh, key, types...)
	return err == nil && !slices.Contains(perm, false), err
}

// needs returns the attributes the key must keep set for what the Source
// does, and what they allow, for a message.
func (s *Source) needs() ([]uint, string) {
	switch {
	case s.kind == keyRSA:
		return []uint{p11.CKA_DECRYPT}, "decrypt"
	case s.aesMode == kindKWP:
		return []uint{p11.CKA_WRAP, p11.CKA_UNWRAP}, "wrap and unwrap"
	}
	return []uint{p11.CKA_ENCRYPT, p11.CKA_DECRYPT}, "encrypt and decrypt"
}

func (s *Source) keyName() string {
	if s.kind == keyRSA {
		return fmt.Sprintf("RSA key %q", s.uri.Object)
	}
	return fmt.Sprintf("AES key %q", s.uri.Object)
}

// mechanism reports whether the token offers mech with all of flags.
func (s *Source) mechanism(mech, flags uint) bool {
	info, err := s.ck().GetMechanismInfo(s.tok.slot, []*p11.Mechanism{p11.NewMechanism(mech, nil)})
	return err == nil && info.Flags&flags == flags
}

// attrUint decodes a CK_ULONG attribute value (native byte order).
func attrUint(a *p11.Attribute) uint {
	switch len(a.Value) {
	case 8:
		return uint(binary.NativeEndian.Uint64(a.Value))
	case 4:
		return uint(binary.NativeEndian.Uint32(a.Value))
	}
	return ^uint(0)
}

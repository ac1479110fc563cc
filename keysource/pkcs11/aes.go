//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/subtle"
	"fmt"
	"io"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// gcmAAD returns the additional data of a kind-1 body whose bytes up to
// the IV are head: head, then the volume ID.
func (s *Source) gcmAAD(head []byte) []byte {
	return append(bytes.Clone(head), s.volume[:]...)
}

// bound returns V ‖ K, the plaintext that key wrap and RSA-OAEP protect.
// The caller clears it.
func (s *Source) bound(dataKey []byte) []byte {
	b := make([]byte, 0, boundSize)
	b = append(b, s.volume[:]...)
	return append(b, dataKey...)
}

// openBound checks that b is V ‖ K for this volume and returns a copy of
// K. It clears b.
func (s *Source) openBound(b []byte) ([]byte, error) {
	defer clear(b)
	if len(b) != boundSize || subtle.ConstantTimeCompare(b[:volumeIDSize], s.volume[:]) != 1 {
		return nil, errNoAuth(s.uri.Token)
	}
	return bytes.Clone(b[volumeIDSize:]), nil
}

// gcmLayouts returns the parameter layouts to try on the token: the one
// it took before, else the header's first, then the specification
// text's.
func (t *token) gcmLayouts() []gcmLayout {
	if l := gcmLayout(t.gcmLayout.Load()); l != 0 {
		return []gcmLayout{l}
	}
	return []gcmLayout{gcmWithIVBits, gcmWithoutIVBits}
}

// wrapGCM encrypts dataKey on the token with CKM_AES_GCM.
//
// Who draws the IV is learnt once per token, in a fixed order: first an
// IV kmsfs draws (SoftHSM, and most tokens), then, if the token refuses
// that parameter, a zeroed IV buffer for the token to fill (HSMs in FIPS
// mode). Each is tried with the header's CK_GCM_PARAMS layout and then
// the one without ulIvBits. Only a definite refusal of the parameters
// moves on to the next form; the first form that works is kept for the
// token.
func (s *Source) wrapGCM(ctx context.Context, dataKey []byte) ([]byte, error) {
	var out []byte
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		head := newBody(kindGCM, s.fp, 1+maxIVSize+gcmSealedSize)
		aad := s.gcmAAD(head)
		modes := []int32{ivCaller, ivToken}
		if m := s.tok.gcmTokenIV.Load(); m != 0 {
			modes = []int32{m}
		}
		var err error
		for _, mode := range modes {
			for _, layout := range s.tok.gcmLayouts() {
				var iv, sealed []byte
				iv, sealed, err = s.gcmSeal(sh, key, mode, layout, aad, dataKey)
				if err == nil {
					s.tok.gcmTokenIV.Store(mode)
					s.tok.gcmLayout.Store(int32(layout))
					b := append(head, byte(len(iv)))
					b = append(b, iv...)
					out = append(b, sealed...)
					return nil
				}
				if !paramRefused(err) {
					return err
				}
			}
		}
		return fmt.Errorf("pkcs11: token %q takes none of the AES-GCM parameter forms kmsfs knows (caller's or token's IV, with or without ulIvBits); use wrap=kwp: %w",
			s.uri.Token, err)
	})
	return out, err
}

// gcmSeal runs one AES-GCM encryption in the given form and returns the
// IV used and ciphertext ‖ tag.
func (s *Source) gcmSeal(sh p11.SessionHandle, key p11.ObjectHandle, mode int32, layout gcmLayout, aad, dataKey []byte) (iv, sealed []byte, err error) {
	iv = make([]byte, gcmIVSize)
	if mode == ivCaller {
		if _, err := io.ReadFull(s.rand, iv); err != nil {
			return nil, nil, fmt.Errorf("pkcs11: GCM IV: %w", err)
		}
	}
	gp := newGCMParams(iv, aad, 8*gcmTagSize, layout)
	defer gp.free()
	c := s.ck()
	if err := c.EncryptInit(sh, gp.mechanism(), key); err != nil {
		return nil, nil, tokenErr("AES-GCM wrap", s.uri.Token, err)
	}
	ct, err := c.Encrypt(sh, dataKey)
	if err != nil {
		return nil, nil, tokenErr("AES-GCM wrap", s.uri.Token, err)
	}
	used := gp.iv()
	switch n := len(ct) - gcmSealedSize; {
	case n == 0:
		// The IV is the caller's, or the token wrote its own over it.
		if mode == ivToken && !bytes.ContainsFunc(used, func(r rune) bool { return r != 0 }) {
			return nil, nil, fmt.Errorf("pkcs11: AES-GCM wrap on token %q returned no IV: %w", s.uri.Token, keysource.ErrUnavailable)
		}
		return used, ct, nil
	case n > 0 && n <= maxIVSize && mode == ivToken:
		// The token appended the IV it drew.
		return ct[gcmSealedSize:], ct[:gcmSealedSize], nil
	}
	return nil, nil, fmt.Errorf("pkcs11: AES-GCM wrap on token %q gave %d bytes", s.uri.Token, len(ct))
}

func (s *Source) unwrapGCM(ctx context.Context, bd body) ([]byte, error) {
	var dk []byte
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		c := s.ck()
		var err error
		for _, layout := range s.tok.gcmLayouts() {
			gp := newGCMParams(bd.iv, s.gcmAAD(bd.head), 8*gcmTagSize, layout)
			err = c.DecryptInit(sh, gp.mechanism(), key)
			if err != nil {
				gp.free()
				if paramRefused(err) {
					continue
				}
				return tokenErr("AES-GCM unwrap", s.uri.Token, err)
			}
			s.tok.gcmLayout.Store(int32(layout))
			pt, err := c.Decrypt(sh, bd.data)
			gp.free()
			if err != nil {
				return unwrapErr(s.uri.Token, err)
			}
			if len(pt) != keysource.DataKeySize {
				clear(pt)
				return errNoAuth(s.uri.Token)
			}
			dk = pt
			return nil
		}
		return tokenErr("AES-GCM unwrap", s.uri.Token, err)
	})
	return dk, err
}

// secretTemplate describes the session object that carries V ‖ K in and
// out of C_WrapKey and C_UnwrapKey, of value v unless v is nil (the
// token sets it when it unwraps). It is sensitive, since HSMs that keep
// every secret key sensitive refuse any other, and lives only in the
// session, for the length of one call.
func secretTemplate(v []byte) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
	}
	if v != nil {
		t = append(t, p11.NewAttribute(p11.CKA_VALUE, v))
	}
	return t
}

// newTransportKey draws a one-time AES-256 key and creates it on the
// token as a session key that wraps: V ‖ K leaves the token under it,
// for kmsfs to unwrap in Go. The caller clears kek and destroys h.
func (s *Source) newTransportKey(sh p11.SessionHandle, op string) (kek []byte, h p11.ObjectHandle, err error) {
	kek = make([]byte, 32)
	if _, err := io.ReadFull(s.rand, kek); err != nil {
		return nil, 0, fmt.Errorf("pkcs11: transport key: %w", err)
	}
	h, err = s.ck().CreateObject(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_VALUE, kek),
	})
	if err != nil {
		clear(kek)
		return nil, 0, tokenErr(op, s.uri.Token, err)
	}
	return kek, h, nil
}

// kwpMechanisms are the numbers RFC 5649 key wrap goes by, in the order
// kmsfs tries them: PKCS#11 3.0's CKM_AES_KEY_WRAP_KWP, SoftHSM's
// CKM_AES_KEY_WRAP_PAD (which on other tokens may mean another padding),
// AWS CloudHSM's CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD and Thales Luna's
// CKM_AES_KWP. Vendor numbers can mean anything on another vendor's
// token, so each is checked against RFC 5649 before use (chooseKWP).
func kwpMechanisms() []uint { return []uint{0x210B, p11.CKM_AES_KEY_WRAP_PAD, 0x8000216F, 0x80000171} }

// chooseKWP returns the first of kwpMechanisms the token offers for wrap
// and unwrap that wraps a test key exactly as RFC 5649 does, or 0. The
// answer is the token's, so it is worked out once per token; a failed
// test (a lost session) is not kept.
func (s *Source) chooseKWP(sh p11.SessionHandle) (uint, error) {
	t := s.tok
	t.kwpMu.Lock()
	defer t.kwpMu.Unlock()
	if t.kwpKnown {
		return t.kwpMech, nil
	}
	for _, m := range kwpMechanisms() {
		if !s.mechanism(m, p11.CKF_WRAP|p11.CKF_UNWRAP) {
			continue
		}
		ok, err := s.isRFC5649(sh, m)
		if err != nil {
			return 0, err
		}
		if ok {
			t.kwpKnown, t.kwpMech = true, m
			return m, nil
		}
	}
	t.kwpKnown = true
	return 0, nil
}

// isRFC5649 wraps a random test value under a random transport key with
// mech on the token and compares with RFC 5649 done in Go.
func (s *Source) isRFC5649(sh p11.SessionHandle, mech uint) (bool, error) {
	kek, t, err := s.newTransportKey(sh, "create a session key")
	if err != nil {
		return false, err
	}
	defer clear(kek)
	c := s.ck()
	defer c.DestroyObject(sh, t)
	val := make([]byte, boundSize)
	if _, err := io.ReadFull(s.rand, val); err != nil {
		return false, fmt.Errorf("pkcs11: key-wrap test: %w", err)
	}
	o, err := c.CreateObject(sh, secretTemplate(val))
	if err != nil {
		return false, tokenErr("create a session key", s.uri.Token, err)
	}
	defer c.DestroyObject(sh, o)
	got, err := c.WrapKey(sh, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, t, o)
	if err != nil {
		if lost(err) {
			return false, tokenErr("key-wrap test", s.uri.Token, err)
		}
		return false, nil
	}
	want, err := kwpWrap(kek, val)
	return err == nil && bytes.Equal(got, want), nil
}

// wrapKWP wraps V ‖ K with RFC 5649 on the token. The mechanism wraps key
// objects only, so V ‖ K goes in as a sensitive session object, destroyed
// at once.
func (s *Source) wrapKWP(ctx context.Context, dataKey []byte) ([]byte, error) {
	v := s.bound(dataKey)
	defer clear(v)
	var out []byte
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		c := s.ck()
		obj, err := c.CreateObject(sh, secretTemplate(v))
		if err != nil {
			return tokenErr("AES key wrap", s.uri.Token, err)
		}
		defer c.DestroyObject(sh, obj)
		w, err := c.WrapKey(sh, []*p11.Mechanism{p11.NewMechanism(s.kwpMech, nil)}, key, obj)
		if err != nil {
			return tokenErr("AES key wrap", s.uri.Token, err)
		}
		if len(w) != kwpSize {
			return fmt.Errorf("pkcs11: AES key wrap on token %q gave %d bytes", s.uri.Token, len(w))
		}
		out = append(newBody(kindKWP, s.fp, kwpSize), w...)
		return nil
	})
	return out, err
}

// unwrapKWP unwraps V ‖ K into a sensitive session object, then wraps it
// out again under a one-time transport key that kmsfs drew and unwraps
// that in Go: no secret object's value is ever read, which HSMs that keep
// every secret key sensitive refuse.
func (s *Source) unwrapKWP(ctx context.Context, bd body) ([]byte, error) {
	if s.kwpMech == 0 {
		return nil, fmt.Errorf("pkcs11: stanza was wrapped with RFC 5649 key wrap, which token %q does not offer for %s: %w",
			s.uri.Token, s.objectName(), keysource.ErrInvalid)
	}
	var v []byte
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		c := s.ck()
		mech := []*p11.Mechanism{p11.NewMechanism(s.kwpMech, nil)}
		obj, err := c.UnwrapKey(sh, mech, key, bd.data, secretTemplate(nil))
		if err != nil {
			return unwrapErr(s.uri.Token, err)
		}
		defer c.DestroyObject(sh, obj)
		kek, t, err := s.newTransportKey(sh, "AES key unwrap")
		if err != nil {
			return err
		}
		defer clear(kek)
		defer c.DestroyObject(sh, t)
		w, err := c.WrapKey(sh, mech, t, obj)
		if err != nil {
			return tokenErr("AES key unwrap", s.uri.Token, err)
		}
		if v, err = kwpUnwrap(kek, w); err != nil {
			return fmt.Errorf("pkcs11: AES key unwrap on token %q: the token's key wrap is not RFC 5649: %w", s.uri.Token, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.openBound(v)
}

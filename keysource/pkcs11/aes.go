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

// gcmAAD returns the additional data of a kind-1 body: its version and
// kind bytes, then the volume ID.
func (s *Source) gcmAAD() []byte {
	return append([]byte{bodyVersion, kindGCM}, s.volume[:]...)
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

// wrapGCM encrypts dataKey on the token with CKM_AES_GCM under an IV from
// s.rand. Some HSMs replace the caller's IV with their own; the IV the
// token reports back is the one stored.
func (s *Source) wrapGCM(ctx context.Context, dataKey []byte) ([]byte, error) {
	b := make([]byte, gcmBodySize)
	b[0], b[1] = bodyVersion, kindGCM
	iv := b[bodyHead : bodyHead+gcmIVSize]
	if _, err := io.ReadFull(s.rand, iv); err != nil {
		return nil, fmt.Errorf("pkcs11: GCM IV: %w", err)
	}
	err := s.pool.do(ctx, func(sh p11.SessionHandle) error {
		gp := p11.NewGCMParams(iv, s.gcmAAD(), 8*gcmTagSize)
		defer gp.Free()
		c := s.ck()
		if err := c.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, gp)}, s.key); err != nil {
			return tokenErr("AES-GCM wrap", s.uri.Token, err)
		}
		ct, err := c.Encrypt(sh, dataKey)
		if err != nil {
			return tokenErr("AES-GCM wrap", s.uri.Token, err)
		}
		if len(ct) != gcmBodySize-bodyHead-gcmIVSize {
			return fmt.Errorf("pkcs11: AES-GCM wrap on token %q gave %d bytes", s.uri.Token, len(ct))
		}
		if used := gp.IV(); !bytes.Equal(used, iv) {
			if len(used) != gcmIVSize {
				return fmt.Errorf("pkcs11: token %q used a %d-byte GCM IV, want %d", s.uri.Token, len(used), gcmIVSize)
			}
			copy(iv, used)
		}
		copy(b[bodyHead+gcmIVSize:], ct)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (s *Source) unwrapGCM(ctx context.Context, bd body) ([]byte, error) {
	var dk []byte
	err := s.pool.do(ctx, func(sh p11.SessionHandle) error {
		gp := p11.NewGCMParams(bd.iv, s.gcmAAD(), 8*gcmTagSize)
		defer gp.Free()
		c := s.ck()
		if err := c.DecryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, gp)}, s.key); err != nil {
			return tokenErr("AES-GCM unwrap", s.uri.Token, err)
		}
		pt, err := c.Decrypt(sh, bd.data)
		if err != nil {
			return unwrapErr(s.uri.Token, err)
		}
		if len(pt) != keysource.DataKeySize {
			clear(pt)
			return errNoAuth(s.uri.Token)
		}
		dk = pt
		return nil
	})
	return dk, err
}

// secretTemplate describes the session object that carries V ‖ K in and
// out of C_WrapKey and C_UnwrapKey. It lives only in the session, for the
// length of one call.
func secretTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_SENSITIVE, false),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
	}
}

// wrapKWP wraps V ‖ K with CKM_AES_KEY_WRAP_PAD. The mechanism wraps key
// objects only, so V ‖ K goes in as a session object, destroyed at once.
func (s *Source) wrapKWP(ctx context.Context, dataKey []byte) ([]byte, error) {
	v := s.bound(dataKey)
	defer clear(v)
	b := make([]byte, kwpBodySize)
	b[0], b[1] = bodyVersion, kindKWP
	err := s.pool.do(ctx, func(sh p11.SessionHandle) error {
		c := s.ck()
		obj, err := c.CreateObject(sh, append(secretTemplate(), p11.NewAttribute(p11.CKA_VALUE, v)))
		if err != nil {
			return tokenErr("AES key wrap", s.uri.Token, err)
		}
		defer c.DestroyObject(sh, obj)
		w, err := c.WrapKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, s.key, obj)
		if err != nil {
			return tokenErr("AES key wrap", s.uri.Token, err)
		}
		if len(w) != kwpBodySize-bodyHead {
			return fmt.Errorf("pkcs11: AES key wrap on token %q gave %d bytes", s.uri.Token, len(w))
		}
		copy(b[bodyHead:], w)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (s *Source) unwrapKWP(ctx context.Context, bd body) ([]byte, error) {
	var v []byte
	err := s.pool.do(ctx, func(sh p11.SessionHandle) error {
		c := s.ck()
		obj, err := c.UnwrapKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, s.key, bd.data, secretTemplate())
		if err != nil {
			return unwrapErr(s.uri.Token, err)
		}
		defer c.DestroyObject(sh, obj)
		a, err := c.GetAttributeValue(sh, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
		if err != nil {
			return tokenErr("AES key unwrap", s.uri.Token, err)
		}
		v = a[0].Value
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.openBound(v)
}

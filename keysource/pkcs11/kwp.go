//go:build cgo

package pkcs11

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
)

// RFC 5649 (AES key wrap with padding) in Go. kmsfs never wraps a data key
// with it under a token's key in Go; it is used to check that a mechanism
// the token offers really is RFC 5649, and to read an unwrapped key back
// out of a sensitive-by-policy token, wrapped under a one-time transport
// key kmsfs chose (see unwrapKWP).

// errKWP is an RFC 5649 integrity failure.
var errKWP = errors.New("pkcs11: RFC 5649 integrity check failed")

// kwpWrap wraps p under kek (RFC 5649, section 4.1).
func kwpWrap(kek, p []byte) ([]byte, error) {
	c, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := (len(p) + 7) / 8
	var aiv [8]byte
	binary.BigEndian.PutUint32(aiv[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(p)))
	r := make([]byte, 8*n)
	copy(r, p)
	if n == 1 {
		out := make([]byte, 16)
		copy(out, aiv[:])
		copy(out[8:], r)
		c.Encrypt(out, out)
		return out, nil
	}
	a := aiv
	var b [16]byte
	for j := range 6 {
		for i := range n {
			copy(b[:8], a[:])
			copy(b[8:], r[8*i:8*i+8])
			c.Encrypt(b[:], b[:])
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(r[8*i:], b[8:])
		}
	}
	return append(a[:], r...), nil
}

// kwpUnwrap undoes kwpWrap and checks the integrity value and padding.
// The caller clears the result.
func kwpUnwrap(kek, w []byte) ([]byte, error) {
	c, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(w) < 16 || len(w)%8 != 0 {
		return nil, errKWP
	}
	n := len(w)/8 - 1
	var a [8]byte
	r := make([]byte, 8*n)
	if n == 1 {
		var b [16]byte
		c.Decrypt(b[:], w)
		copy(a[:], b[:8])
		copy(r, b[8:])
		clear(b[:])
	} else {
		copy(a[:], w[:8])
		copy(r, w[8:])
		var b [16]byte
		for j := 5; j >= 0; j-- {
			for i := n - 1; i >= 0; i-- {
				t := uint64(n*j + i + 1)
				binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(b[8:], r[8*i:8*i+8])
				c.Decrypt(b[:], b[:])
				copy(a[:], b[:8])
				copy(r[8*i:], b[8:])
			}
		}
		clear(b[:])
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	ok := subtle.ConstantTimeCompare(a[:4], []byte{0xA6, 0x59, 0x59, 0xA6})
	if mli <= 8*(n-1) || mli > 8*n {
		ok = 0
	} else {
		for _, x := range r[mli:] {
			ok &= subtle.ConstantTimeByteEq(x, 0)
		}
	}
	if ok != 1 {
		clear(r)
		return nil, errKWP
	}
	return r[:mli], nil
}

package vaesgcm

import (
	"crypto/aes"
	"encoding/binary"
)

// gf is an element of GHASH's field GF(2^128) in GCM's bit order: bit 0
// of the block (the top bit of its first byte) is the coefficient of x^0.
type gf struct{ hi, lo uint64 }

func gfFrom(b []byte) gf { return gf{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])} }

func (a gf) bytes() [16]byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], a.hi)
	binary.BigEndian.PutUint64(b[8:], a.lo)
	return b
}

func (a gf) add(b gf) gf { return gf{a.hi ^ b.hi, a.lo ^ b.lo} }

// mul is Algorithm 1 of NIST SP 800-38D, bit by bit: slow and obviously
// the specification, which is what a test wants.
func (a gf) mul(b gf) gf {
	var z gf
	v := b
	for i := range 128 {
		word, shift := a.hi, 63-i
		if i >= 64 {
			word, shift = a.lo, 127-i
		}
		bit := word >> shift & 1
		if bit == 1 {
			z = z.add(v)
		}
		carry := v.lo & 1
		v.lo = v.lo>>1 | v.hi<<63
		v.hi >>= 1
		if carry == 1 {
			v.hi ^= 0xe1 << 56
		}
	}
	return z
}

// inv is a^(2^128-2), the inverse of a non-zero a: the product of a^(2^i)
// for i = 1 … 127.
func (a gf) inv() gf {
	r, sq := gf{hi: 1 << 63}, a
	for range 127 {
		sq = sq.mul(sq)
		r = r.mul(sq)
	}
	return r
}

// nonceFor returns the 16-byte nonce whose pre-counter block under key is
// j0. With a 16-byte IV, J0 = GHASH_H(IV ‖ 0^64 ‖ [128]_64) = IV·H² ⊕ L·H
// with L the length block, which is linear in IV, so
// IV = (J0 ⊕ L·H)·H⁻².
func nonceFor(key []byte, j0 [16]byte) []byte {
	blk, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	var hb [16]byte
	blk.Encrypt(hb[:], hb[:])
	h := gfFrom(hb[:])
	l := gf{lo: NonceSize * 8}
	iv := gfFrom(j0[:]).add(l.mul(h)).mul(h.mul(h).inv())
	b := iv.bytes()
	return b[:]
}

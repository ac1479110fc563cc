package vaesgcm

import (
	"crypto/aes"
	"encoding/binary"
	"slices"
)

// This file is the pure-Go reference for the steps of the generated
// assembly, written from the specifications rather than from the
// assembly: the tests compare each entry point against it on its own, so
// a fault in the generator shows up in the step that has it.

// refCTR is GCM's counter mode from crypto/aes (NIST SP 800-38D, 6.5):
// block i of the key stream is the encryption of the counter block
// advanced by inc32 i times, which wraps the last four bytes and never
// carries into the rest.
func refCTR(key []byte, counter [16]byte, src []byte) []byte {
	b, _ := aes.NewCipher(key)
	out := make([]byte, len(src))
	var ks [16]byte
	for i := 0; i < len(src); i += 16 {
		b.Encrypt(ks[:], counter[:])
		for j := i; j < len(src) && j < i+16; j++ {
			out[j] = src[j] ^ ks[j-i]
		}
		binary.BigEndian.PutUint32(counter[12:], binary.BigEndian.Uint32(counter[12:])+1)
	}
	return out
}

// refGHASH is GHASH (NIST SP 800-38D, 6.4) continued from acc over the
// whole blocks of data: Y = (Y ⊕ X_i)·H for each block, with the
// bit-by-bit multiply of gf.mul.
func refGHASH(h gf, acc [16]byte, data []byte) [16]byte {
	y := gfFrom(acc[:])
	for i := 0; i+16 <= len(data); i += 16 {
		y = y.add(gfFrom(data[i:])).mul(h)
	}
	return y.bytes()
}

// refHashKey is H = AES_K(0^128).
func refHashKey(key []byte) gf {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	var h [16]byte
	b.Encrypt(h[:], h[:])
	return gfFrom(h[:])
}

// xInv returns x⁻¹ in GHASH's field: x·(x^127 + x^6 + x + 1) =
// x^128 + x^7 + x^2 + x, which is 1 modulo GCM's polynomial
// x^128 + x^7 + x^2 + x + 1.
func xInv() gf { return gf{hi: 1<<63 | 1<<62 | 1<<57, lo: 1} }

// reflected is a field element as the assembly holds it: the block's bytes
// reversed, so that the coefficient of x^i is bit 127-i of a
// little-endian 128-bit integer and carry-less multiplies of two elements
// give their product with the coefficients in the same order.
func reflected(a gf) [16]byte {
	b := a.bytes()
	slices.Reverse(b[:])
	return b
}

// refHashTable is the table initKey fills, from its definition: at entry
// 32-k the power H^k, premultiplied as the reduction expects ("H*2" in
// the reflected form: a left shift of the reflected H, which is H·x⁻¹),
// for k = 32 … 1; then for each power in the same order Karatsuba's
// term, the XOR of its two 64-bit halves in both halves.
func refHashTable(h gf) [64][16]byte {
	var t [64][16]byte
	p := h
	for k := 1; k <= 32; k++ {
		e := reflected(p.mul(xInv()))
		t[32-k] = e
		for i := range 8 {
			t[64-k][i] = e[i] ^ e[i+8]
			t[64-k][i+8] = e[i] ^ e[i+8]
		}
		p = p.mul(h)
	}
	return t
}

// refRoundKeys is the AES-256 key expansion of FIPS 197, 5.2, in the
// layout initKey writes: each round key twice, once per 128-bit lane.
func refRoundKeys(key []byte) [15][32]byte {
	var w [60]uint32
	for i := range 8 {
		w[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := 8; i < len(w); i++ {
		t := w[i-1]
		switch i % 8 {
		case 0:
			t = subWord(t<<8|t>>24) ^ rcon<<24
			rcon = uint32(gmul(byte(rcon), 2))
		case 4:
			t = subWord(t)
		}
		w[i] = w[i-8] ^ t
	}
	var rk [15][32]byte
	for r := range rk {
		for j := range 4 {
			binary.BigEndian.PutUint32(rk[r][4*j:], w[4*r+j])
			binary.BigEndian.PutUint32(rk[r][16+4*j:], w[4*r+j])
		}
	}
	return rk
}

// gmul multiplies in AES's field GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
func gmul(a, b byte) byte {
	var p byte
	for ; b != 0; b >>= 1 {
		if b&1 == 1 {
			p ^= a
		}
		a = a<<1 ^ (a>>7)*0x1b
	}
	return p
}

// sbox is AES's S-box from its definition (FIPS 197, 5.1.1): the inverse
// in GF(2^8) (a^254, which maps 0 to 0), then the affine map.
func sbox(a byte) byte {
	inv := byte(1)
	for range 254 {
		inv = gmul(inv, a)
	}
	rotl := func(b byte, n int) byte { return b<<n | b>>(8-n) }
	return inv ^ rotl(inv, 1) ^ rotl(inv, 2) ^ rotl(inv, 3) ^ rotl(inv, 4) ^ 0x63
}

func subWord(w uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], w)
	for i := range b {
		b[i] = sbox(b[i])
	}
	return binary.BigEndian.Uint32(b[:])
}

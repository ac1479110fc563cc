// Package vaesgcm is AES-256-GCM with 16-byte nonces on x86-64 processors
// with VAES, VPCLMULQDQ and AVX-512: it encrypts two blocks per AES
// instruction and hashes four per carry-less multiply, where Go's
// crypto/cipher handles one, so it seals and opens faster
// (docs/PERFORMANCE.md has the figures). It
// produces exactly what crypto/cipher's GCM with a 16-byte nonce produces;
// New reports whether the processor supports it, and callers fall back to
// crypto/cipher where it does not.
package vaesgcm

// The assembly is written by the program in _asm, a module of its own;
// go -C runs it there.
//go:generate go -C _asm run . -out ../vaesgcm_amd64.s

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"unsafe"
)

const (
	// KeySize is the size of an AES-256 key.
	KeySize = 32
	// NonceSize is the size of the nonce Seal and Open take.
	NonceSize = 16
	// TagSize is the size of the authentication tag that Seal appends.
	TagSize = 16
	// StateSize is the memory NewIn needs for the expanded key and the
	// hash tables.
	StateSize = int(unsafe.Sizeof(gcm{}))
)

var errOpen = errors.New("cipher: message authentication failed")

// gcm is an AES-256-GCM instance: the expanded key, each round key twice
// so that one 256-bit load serves both lanes, and H^32 … H^1 (then their
// Karatsuba terms) for hashing 32 blocks per reduction.
type gcm struct {
	rk   [15][32]byte
	htab [64][16]byte
}

func (*gcm) NonceSize() int { return NonceSize }
func (*gcm) Overhead() int  { return TagSize }

// Seal appends the encryption of plaintext, authenticated together with
// additionalData, to dst and returns the result, as cipher.AEAD's Seal.
func (g *gcm) Seal(dst, nonce, plaintext, additionalData []byte) []byte {
	if len(nonce) != NonceSize {
		panic("vaesgcm: incorrect nonce length given to GCM")
	}
	if uint64(len(plaintext)) > (1<<32-2)*16 {
		panic("vaesgcm: message too large for GCM")
	}
	ret, out := sliceForAppend(dst, len(plaintext)+TagSize)
	if inexactOverlap(out, plaintext) {
		panic("vaesgcm: invalid buffer overlap of output and input")
	}
	j0, mask := g.preCounter(nonce)
	g.crypt(out[:len(plaintext)], plaintext, &j0)
	g.tag(out[len(plaintext):], out[:len(plaintext)], additionalData, &mask)
	return ret
}

// Open authenticates ciphertext (which ends in its tag) and additionalData
// and, if they are authentic, appends the plaintext to dst, as cipher.AEAD's
// Open. Nothing is decrypted before the tag is verified.
func (g *gcm) Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		panic("vaesgcm: incorrect nonce length given to GCM")
	}
	if len(ciphertext) < TagSize || uint64(len(ciphertext)) > (1<<32-2)*16+TagSize {
		return nil, errOpen
	}
	ct, tag := ciphertext[:len(ciphertext)-TagSize], ciphertext[len(ciphertext)-TagSize:]
	ret, out := sliceForAppend(dst, len(ct))
	if inexactOverlap(out, ciphertext) {
		panic("vaesgcm: invalid buffer overlap of output and input")
	}
	j0, mask := g.preCounter(nonce)
	var want [TagSize]byte
	g.tag(want[:], ct, additionalData, &mask)
	if subtle.ConstantTimeCompare(want[:], tag) != 1 {
		return nil, errOpen
	}
	g.crypt(out, ct, &j0)
	return ret, nil
}

// preCounter returns GCM's pre-counter block for a 16-byte nonce,
// GHASH(nonce ‖ 0^64 ‖ [128]_64), and its encryption, which masks the tag.
func (g *gcm) preCounter(nonce []byte) (j0, mask [16]byte) {
	var b [32]byte
	copy(b[:], nonce)
	binary.BigEndian.PutUint64(b[24:], NonceSize*8)
	ghash(&g.htab, &j0, b[:])
	ctr(&g.rk, &j0, mask[:], mask[:])
	return j0, mask
}

// crypt XORs src with the key stream that starts at inc32(j0) into dst.
func (g *gcm) crypt(dst, src []byte, j0 *[16]byte) {
	if len(dst) < len(src) {
		panic("vaesgcm: output shorter than input")
	}
	c := *j0
	inc32(&c, 1)
	full := len(src) &^ 15
	ctr(&g.rk, &c, dst[:full], src[:full])
	if full == len(src) {
		return
	}
	inc32(&c, uint32(full/16))
	var b [16]byte
	copy(b[:], src[full:])
	ctr(&g.rk, &c, b[:], b[:])
	copy(dst[full:], b[:])
}

// tag computes GHASH(additionalData, ct) XOR mask into t.
func (g *gcm) tag(t, ct, additionalData []byte, mask *[16]byte) {
	var s [16]byte
	g.hashPadded(&s, additionalData)
	g.hashPadded(&s, ct)
	var l [16]byte
	binary.BigEndian.PutUint64(l[:8], uint64(len(additionalData))*8)
	binary.BigEndian.PutUint64(l[8:], uint64(len(ct))*8)
	ghash(&g.htab, &s, l[:])
	subtle.XORBytes(t, s[:], mask[:])
}

// hashPadded folds b, zero-padded to whole blocks, into s.
func (g *gcm) hashPadded(s *[16]byte, b []byte) {
	if len(b) == 0 {
		return
	}
	if len(b) <= 64 {
		var p [64]byte
		copy(p[:], b)
		ghash(&g.htab, s, p[:(len(b)+15)&^15])
		return
	}
	full := len(b) &^ 15
	ghash(&g.htab, s, b[:full])
	if full < len(b) {
		var p [16]byte
		copy(p[:], b[full:])
		ghash(&g.htab, s, p[:])
	}
}

// inc32 adds n to the counter block's last four bytes modulo 2^32.
func inc32(c *[16]byte, n uint32) {
	binary.BigEndian.PutUint32(c[12:], binary.BigEndian.Uint32(c[12:])+n)
}

func sliceForAppend(in []byte, n int) (head, tail []byte) {
	if total := len(in) + n; cap(in) >= total {
		head = in[:total]
	} else {
		head = make([]byte, total)
		copy(head, in)
	}
	tail = head[len(in):]
	return
}

// inexactOverlap reports whether x and y share memory at different
// offsets, which in-place use (identical starts) does not.
func inexactOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 || &x[0] == &y[0] {
		return false
	}
	return uintptr(unsafe.Pointer(&x[0])) <= uintptr(unsafe.Pointer(&y[len(y)-1])) &&
		uintptr(unsafe.Pointer(&y[0])) <= uintptr(unsafe.Pointer(&x[len(x)-1]))
}

package vaesgcm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
)

// ErrSelfTest means the implementation gave other bytes than crypto/cipher
// on a known-answer vector, or accepted a changed ciphertext: it must not
// be used.
var ErrSelfTest = errors.New("vaesgcm: self-test failed")

// selfTestKey is the key of every known-answer vector. wrapNonce is the
// nonce whose pre-counter block under that key is 0^96 ‖ 0xffffffea, so
// the 32-bit block counter wraps to zero at block 21: in the second pass
// of the 16-block counter loop, between the two lanes of one register.
// Random nonces practically never wrap inside a message, so it is solved
// from GHASH's linearity in the nonce (nonceFor in gf_test.go;
// TestWrapNonce solves it again).
const (
	selfTestKey = "KMSFS vaesgcm self-test key 0123"
	wrapNonce   = "\x41\xa1\x12\xaa\x69\xe5\x59\x66\x55\xd3\x89\x81\x46\x4f\x07\x97"
)

// selfTestShape is the size of one known-answer vector's plaintext and
// additional data.
type selfTestShape struct{ pt, ad int }

// selfTestShapes reach every path of the assembly and of the Go around
// it: no plaintext, one byte, one block, a partial last block, the
// 16-block and 32-block loops with and without a rest, a 4 KiB block and
// one byte more; additional data empty, one byte, the codec's 25 bytes,
// exactly and just over the 64 bytes hashed from a stack copy.
func selfTestShapes() []selfTestShape {
	return []selfTestShape{
		{0, 0}, {0, 25}, {1, 0}, {15, 1}, {16, 25}, {17, 64}, {255, 65},
		{256, 0}, {512, 25}, {527, 300}, {4096, 25}, {4097, 25}, {8191, 7},
	}
}

// selfTestBuf returns a buffer that holds any vector's additional data
// and plaintext.
func selfTestBuf() []byte {
	most := 0
	for _, s := range selfTestShapes() {
		most = max(most, s.ad+s.pt)
	}
	return make([]byte, most)
}

// selfTestVector fills a vector's nonce, additional data and plaintext
// with a pattern that differs between vectors, in buf (selfTestBuf); the
// last vector takes the wrap nonce.
func selfTestVector(i int, s selfTestShape, buf []byte) (nonce, ad, pt []byte) {
	nonce = make([]byte, NonceSize)
	for j := range nonce {
		nonce[j] = byte(31*i + 13*j + 1)
	}
	if i == len(selfTestShapes())-1 {
		copy(nonce, wrapNonce)
	}
	for j := range buf[:s.ad+s.pt] {
		buf[j] = byte(7*j + j>>8 + i)
	}
	return nonce, buf[:s.ad], buf[s.ad : s.ad+s.pt]
}

// SelfTest seals and opens fixed vectors with New and with crypto/cipher's
// GCM and compares the bytes; it also checks that Open refuses each sealed
// vector with one byte changed. It returns an error wrapping ErrSelfTest
// that names the first vector that failed, or one saying New is not
// supported. Callers run it once before first use and use crypto/cipher
// if it fails.
func SelfTest() error { return Compare(New) }

// Compare is SelfTest for the AEADs newAEAD returns; New is the only
// implementation in production, other arguments are tests' broken ones.
func Compare(newAEAD func(key []byte) (cipher.AEAD, bool)) error {
	a, ok := newAEAD([]byte(selfTestKey))
	if !ok {
		return errors.New("vaesgcm: not supported on this processor")
	}
	blk, err := aes.NewCipher([]byte(selfTestKey))
	if err != nil {
		return fmt.Errorf("vaesgcm: self-test reference: %w", err)
	}
	ref, err := cipher.NewGCMWithNonceSize(blk, NonceSize)
	if err != nil {
		return fmt.Errorf("vaesgcm: self-test reference: %w", err)
	}
	buf := selfTestBuf()
	for i, s := range selfTestShapes() {
		nonce, ad, pt := selfTestVector(i, s, buf)
		want := ref.Seal(nil, nonce, pt, ad)
		if got := a.Seal(nil, nonce, pt, ad); !bytes.Equal(got, want) {
			return fmt.Errorf("%w: Seal of %d bytes with %d bytes of additional data differs from crypto/cipher", ErrSelfTest, s.pt, s.ad)
		}
		if back, err := a.Open(nil, nonce, want, ad); err != nil || !bytes.Equal(back, pt) {
			return fmt.Errorf("%w: Open of %d bytes with %d bytes of additional data sealed by crypto/cipher does not return the plaintext", ErrSelfTest, s.pt, s.ad)
		}
		want[(i*131)%len(want)] ^= 0x04
		if _, err := a.Open(nil, nonce, want, ad); err == nil {
			return fmt.Errorf("%w: Open accepted %d bytes with %d bytes of additional data after a byte was changed", ErrSelfTest, s.pt, s.ad)
		}
	}
	return nil
}

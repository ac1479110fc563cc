package vaesgcm

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzSplit cuts a fuzz input into key, nonce, additional data and
// plaintext. The key and nonce are the first KeySize and next NonceSize
// bytes, zero-padded when the input is shorter, so every input is a valid
// key and nonce and reaches the assembly; the next two bytes (big-endian)
// bound how much of the rest is additional data.
func fuzzSplit(in []byte) (key, nonce, ad, pt []byte) {
	head := make([]byte, KeySize+NonceSize+2)
	n := copy(head, in)
	key, nonce = head[:KeySize], head[KeySize:KeySize+NonceSize]
	rest := in[n:]
	cut := min(int(binary.BigEndian.Uint16(head[KeySize+NonceSize:])), len(rest))
	return key, nonce, rest[:cut], rest[cut:]
}

// fuzzJoin is fuzzSplit's inverse, for seeds.
func fuzzJoin(key, nonce, ad, pt []byte) []byte {
	in := append(append(bytes.Clone(key), nonce...), byte(len(ad)>>8), byte(len(ad)))
	return append(append(in, ad...), pt...)
}

// FuzzMatchesCryptoCipher seals every input with vaesgcm and crypto/cipher
// and compares the bytes, opens the result, and feeds Open the sealed
// message with a changed ciphertext byte, tag byte, additional-data byte
// or nonce byte, with additional data one byte longer, and cut by one
// byte: each must fail, with nothing written to dst. Seeded from the
// self-test's vectors.
func FuzzMatchesCryptoCipher(f *testing.F) {
	shapes := selfTestShapes()
	if len(shapes) == 0 {
		f.Fatal("no self-test vectors to seed from")
	}
	buf := selfTestBuf()
	for i, s := range shapes {
		nonce, ad, pt := selfTestVector(i, s, buf)
		f.Add(fuzzJoin([]byte(selfTestKey), nonce, ad, pt))
	}
	f.Add([]byte{})
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, in []byte) {
		key, nonce, ad, pt := fuzzSplit(in)
		g, ref := need(t, key), stdGCM(t, key)
		want := ref.Seal(nil, nonce, pt, ad)
		sealed := g.Seal(nil, nonce, pt, ad)
		if !bytes.Equal(sealed, want) {
			t.Fatalf("Seal of %d bytes with %d bytes of additional data differs from crypto/cipher", len(pt), len(ad))
		}
		if back, err := g.Open(nil, nonce, sealed, ad); err != nil || !bytes.Equal(back, pt) {
			t.Fatalf("Open of its own Seal: %v", err)
		}
		// Positions to change depend on the input, so the fuzzer moves them.
		pick := func(n int) int { return int(binary.BigEndian.Uint32(key[4:])) % n }
		dst := make([]byte, 0, len(pt))
		refuse := func(what string, n, c, a []byte) {
			t.Helper()
			if out, err := g.Open(dst, n, c, a); err == nil || out != nil {
				t.Fatalf("Open accepted %s", what)
			}
			if !bytes.Equal(dst[:cap(dst)], make([]byte, cap(dst))) {
				t.Fatalf("Open wrote to dst before refusing %s", what)
			}
		}
		flip := func(b []byte, i int) []byte {
			b = bytes.Clone(b)
			b[i] ^= 1 << (i % 8)
			return b
		}
		if len(pt) > 0 {
			refuse("a changed ciphertext byte", nonce, flip(sealed, pick(len(pt))), ad)
		}
		refuse("a changed tag byte", nonce, flip(sealed, len(pt)+pick(TagSize)), ad)
		if len(ad) > 0 {
			refuse("a changed additional-data byte", nonce, sealed, flip(ad, pick(len(ad))))
		}
		refuse("a changed nonce byte", flip(nonce, pick(NonceSize)), sealed, ad)
		refuse("longer additional data", nonce, sealed, append(bytes.Clone(ad), 0))
		refuse("a message cut by one byte", nonce, sealed[:len(sealed)-1], ad)
	})
}

package vaesgcm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// need returns the wide implementation under key, skipping the test on a
// processor without it (the callers then use crypto/cipher, which these
// tests compare against).
func need(t testing.TB, key []byte) *gcm {
	t.Helper()
	a, ok := New(key)
	if !ok {
		t.Skip("no VAES/VPCLMULQDQ on this processor (or purego build)")
	}
	return a.(*gcm)
}

func stdGCM(t testing.TB, key []byte) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCMWithNonceSize(b, NonceSize)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func fill(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Lengths around every path of the assembly: 32- and 16-block loops, the
// rest taken together (1–15 blocks), and a partial last block.
var lengths = func() []int {
	ls := []int{4096, 4095, 4097, 65536, 65536 - 1, 3 * 4096}
	for n := 0; n <= 1100; n++ {
		ls = append(ls, n)
	}
	return ls
}()

func TestMatchesCryptoCipher(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range lengths {
		key, nonce := fill(r, KeySize), fill(r, NonceSize)
		ad := fill(r, r.IntN(100))
		pt := fill(r, n)
		g, ref := need(t, key), stdGCM(t, key)
		want := ref.Seal(nil, nonce, pt, ad)
		got := g.Seal(nil, nonce, pt, ad)
		if !bytes.Equal(got, want) {
			i := 0
			for i < len(got) && got[i] == want[i] {
				i++
			}
			t.Fatalf("len %d, ad %d: Seal differs from crypto/cipher from byte %d of %d", n, len(ad), i, len(got))
		}
		back, err := g.Open(nil, nonce, got, ad)
		if err != nil || !bytes.Equal(back, pt) {
			t.Fatalf("len %d: Open of own Seal: %v", n, err)
		}
	}
}

func TestAdditionalDataLengths(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 15, 16, 17, 25, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1000} {
		key, nonce := fill(r, KeySize), fill(r, NonceSize)
		ad, pt := fill(r, n), fill(r, 100)
		want := stdGCM(t, key).Seal(nil, nonce, pt, ad)
		if got := need(t, key).Seal(nil, nonce, pt, ad); !bytes.Equal(got, want) {
			t.Fatalf("additional data of %d bytes: Seal differs from crypto/cipher", n)
		}
	}
}

// The counter's last four bytes wrap modulo 2^32 without carrying into the
// rest, in the 16-block loop, between the two lanes of a register, in the
// single blocks and in a partial last block. Random nonces almost never
// reach a wrap within a message, so this drives the counter directly.
func TestCounterWraps(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	key := fill(r, KeySize)
	g := need(t, key)
	for _, low := range []uint32{0xffffffff, 0xfffffffe, 0xfffffff1, 0xffffffe0, 0xffffff00} {
		for _, n := range []int{16, 32, 16 * 17, 16*40 + 7, 4096} {
			var j0 [16]byte
			copy(j0[:], fill(r, 12))
			binary.BigEndian.PutUint32(j0[12:], low)
			src := fill(r, n)
			dst := make([]byte, n)
			g.crypt(dst, src, &j0)
			next := j0
			binary.BigEndian.PutUint32(next[12:], low+1)
			if want := refCTR(key, next, src); !bytes.Equal(dst, want) {
				t.Fatalf("counter %#x, %d bytes: key stream differs from crypto/aes", low, n)
			}
		}
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	key, nonce := fill(r, KeySize), fill(r, NonceSize)
	ad, pt := fill(r, 25), fill(r, 4096+5)
	g := need(t, key)
	sealed := g.Seal(nil, nonce, pt, ad)
	dst := make([]byte, 0, len(pt))
	check := func(what string, n, s, a []byte) {
		t.Helper()
		out, err := g.Open(dst, n, s, a)
		if err == nil || out != nil {
			t.Fatalf("%s: Open accepted it", what)
		}
		if bytes.Contains(dst[:cap(dst)], pt[:64]) {
			t.Fatalf("%s: plaintext written before the tag was checked", what)
		}
	}
	for _, i := range []int{0, 1, 15, 16, 2048, len(pt) - 1, len(pt), len(sealed) - 1} {
		s := bytes.Clone(sealed)
		s[i] ^= 0x80
		check(fmt.Sprintf("ciphertext byte %d", i), nonce, s, ad)
	}
	for _, i := range []int{0, 24} {
		a := bytes.Clone(ad)
		a[i] ^= 1
		check(fmt.Sprintf("additional data byte %d", i), nonce, sealed, a)
	}
	n := bytes.Clone(nonce)
	n[15] ^= 1
	check("nonce", n, sealed, ad)
	check("truncated", nonce, sealed[:len(sealed)-1], ad)
	check("shorter than a tag", nonce, sealed[:TagSize-1], ad)
	check("extra additional data", nonce, sealed, append(bytes.Clone(ad), 0))
}

func TestInPlace(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	key, nonce := fill(r, KeySize), fill(r, NonceSize)
	ad, pt := fill(r, 25), fill(r, 4096)
	g := need(t, key)
	want := stdGCM(t, key).Seal(nil, nonce, pt, ad)
	buf := make([]byte, len(pt), len(pt)+TagSize)
	copy(buf, pt)
	sealed := g.Seal(buf[:0], nonce, buf, ad)
	if !bytes.Equal(sealed, want) {
		t.Fatal("in-place Seal differs from crypto/cipher")
	}
	opened, err := g.Open(sealed[:0], nonce, sealed, ad)
	if err != nil || !bytes.Equal(opened, pt) {
		t.Fatalf("in-place Open: %v", err)
	}
	for name, f := range map[string]func(){
		"Seal": func() { g.Seal(buf[1:1], nonce, buf[:100], ad) },
		"Open": func() { g.Open(sealed[1:1], nonce, sealed, ad) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("%s into a shifted overlap of its input did not panic", name)
				}
			}()
			f()
		}()
	}
}

func TestAppends(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	key, nonce := fill(r, KeySize), fill(r, NonceSize)
	pt := fill(r, 300)
	g := need(t, key)
	prefix := []byte("prefix")
	out := g.Seal(bytes.Clone(prefix), nonce, pt, nil)
	if !bytes.HasPrefix(out, prefix) || !bytes.Equal(out[len(prefix):], stdGCM(t, key).Seal(nil, nonce, pt, nil)) {
		t.Fatal("Seal did not append to dst")
	}
	back, err := g.Open(bytes.Clone(prefix), nonce, out[len(prefix):], nil)
	if err != nil || !bytes.Equal(back, append(bytes.Clone(prefix), pt...)) {
		t.Fatalf("Open did not append to dst: %v", err)
	}
}

func TestNewRejectsOtherKeySizes(t *testing.T) {
	for _, n := range []int{0, 16, 24, 31, 33} {
		if _, ok := New(make([]byte, n)); ok {
			t.Fatalf("New accepted a %d-byte key", n)
		}
	}
}

func BenchmarkAEAD(b *testing.B) {
	key, nonce, ad := make([]byte, KeySize), make([]byte, NonceSize), make([]byte, 25)
	for _, n := range []int{4096, 65536} {
		pt := make([]byte, n)
		out := make([]byte, 0, n+TagSize)
		for _, impl := range []struct {
			name string
			a    cipher.AEAD
		}{{"crypto-cipher", stdGCM(b, key)}, {"vaesgcm", need(b, key)}} {
			sealed := impl.a.Seal(nil, nonce, pt, ad)
			b.Run(fmt.Sprintf("Seal/%s/%d", impl.name, n), func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					impl.a.Seal(out, nonce, pt, ad)
				}
			})
			b.Run(fmt.Sprintf("Open/%s/%d", impl.name, n), func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					if _, err := impl.a.Open(out, nonce, sealed, ad); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

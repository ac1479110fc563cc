package vaesgcm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestGFInverse(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for i := range 8 {
		a := gf{r.Uint64(), r.Uint64() | 1}
		if got := a.mul(a.inv()); got != (gf{hi: 1 << 63}) {
			t.Fatalf("element %d: a·a⁻¹ = %#x, want 1", i, got)
		}
	}
}

// The committed wrap nonce is the solution for its pre-counter block, and
// the implementation derives that block from it.
func TestWrapNonce(t *testing.T) {
	var j0 [16]byte
	binary.BigEndian.PutUint32(j0[12:], 0xffffffff-21)
	if got := nonceFor([]byte(selfTestKey), j0); !bytes.Equal(got, []byte(wrapNonce)) {
		t.Fatalf("wrap nonce solves to %q, committed %q", got, wrapNonce)
	}
	g := need(t, []byte(selfTestKey))
	if got, _ := g.preCounter([]byte(wrapNonce)); got != j0 {
		t.Fatalf("pre-counter block of the wrap nonce = %x, want %x", got, j0)
	}
}

// A message whose 32-bit block counter wraps to zero at block `wrap`,
// sealed and opened through the public API, matches crypto/cipher: the
// nonces are solved so that the pre-counter block ends in 0xffffffff-wrap,
// and a key stream computed block by block with crypto/aes from that
// block confirms the wrap really falls there.
func TestCounterWrapEndToEnd(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	key := fill(r, KeySize)
	g, ref := need(t, key), stdGCM(t, key)
	for _, c := range []struct{ n, wrap int }{
		{1, 0}, {16, 0}, {17, 1}, {100, 6}, // singles, partial last block
		{4096, 0}, {4096, 1}, {4096, 15}, {4096, 16}, {4096, 21}, // first and second pass of the 16-block loop
		{4096 + 16*5 + 7, 255}, {4096 + 16*5 + 7, 256}, {4096 + 16*5 + 7, 259}, // singles after the loop
		{4096 + 16*5 + 7, 261}, // the partial last block
		{65536 + 3, 4000},      // deep in the loop of a long message
	} {
		t.Run(fmt.Sprintf("len=%d,wrap=%d", c.n, c.wrap), func(t *testing.T) {
			var j0 [16]byte
			copy(j0[:12], fill(r, 12))
			binary.BigEndian.PutUint32(j0[12:], uint32(0xffffffff-c.wrap))
			nonce := nonceFor(key, j0)
			ad, pt := fill(r, 25), fill(r, c.n)
			want := ref.Seal(nil, nonce, pt, ad)
			first := j0
			binary.BigEndian.PutUint32(first[12:], uint32(0xffffffff-c.wrap)+1)
			if !bytes.Equal(want[:c.n], refCTR(key, first, pt)) {
				t.Fatal("crypto/cipher did not start the key stream at the solved counter")
			}
			got := g.Seal(nil, nonce, pt, ad)
			if !bytes.Equal(got, want) {
				t.Fatal("Seal differs from crypto/cipher")
			}
			back, err := g.Open(nil, nonce, want, ad)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("Open of crypto/cipher's Seal: %v", err)
			}
		})
	}
}

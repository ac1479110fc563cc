package vaesgcm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// The reference's premultiplier is the inverse of x, so the table it
// expects is H^k·x⁻¹ and not some other multiple.
func TestReferenceXInverse(t *testing.T) {
	if got := xInv().mul(gf{hi: 1 << 62}); got != (gf{hi: 1 << 63}) {
		t.Fatalf("x⁻¹·x = %#x, want 1", got)
	}
}

// initKey writes the FIPS 197 key schedule into both lanes of each round
// key and the powers of H with their Karatsuba terms, as the reference
// derives them from the specifications.
func TestInitKeyMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	for i := range 4 {
		key := fill(r, KeySize)
		if i == 0 {
			key = make([]byte, KeySize)
		}
		t.Run(fmt.Sprintf("key=%x", key[:4]), func(t *testing.T) {
			g := need(t, key)
			want := refRoundKeys(key)
			for j := range g.rk {
				if g.rk[j] != want[j] {
					t.Fatalf("round key %d = %x, want %x", j, g.rk[j], want[j])
				}
			}
			wantTab := refHashTable(refHashKey(key))
			for j := range g.htab {
				if g.htab[j] != wantTab[j] {
					t.Fatalf("hash table entry %d = %x, want %x", j, g.htab[j], wantTab[j])
				}
			}
		})
	}
}

// ghash over every number of blocks through the 32-block loop, the
// 16-block step and the rest, from a random accumulator, at an unaligned
// address and with a partial block after the whole ones (which it must
// leave out), matches GHASH computed bit by bit.
func TestGHASHMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	key := fill(r, KeySize)
	g := need(t, key)
	h := refHashKey(key)
	var blocks []int
	for n := 0; n <= 100; n++ {
		blocks = append(blocks, n)
	}
	blocks = append(blocks, 127, 128, 129, 32*4+16+15, 256+1)
	for i, n := range blocks {
		tail, offset := i%16, i%3
		t.Run(fmt.Sprintf("blocks=%d,tail=%d,offset=%d", n, tail, offset), func(t *testing.T) {
			buf := fill(r, offset+16*n+tail)
			data := buf[offset:]
			var acc [16]byte
			copy(acc[:], fill(r, 16))
			want := refGHASH(h, acc, data)
			ghash(&g.htab, &acc, data)
			if acc != want {
				t.Fatalf("ghash = %x, reference %x", acc, want)
			}
		})
	}
}

// ctr's key stream over every number of blocks through the 16-block loop
// and the single blocks, from counters whose low word wraps in the loop,
// between the lanes of one register or in the single blocks, matches
// counter mode built block by block on crypto/aes. The bytes before the
// low word are all ones in some counters, so a carry out of the wrap
// would show. ctr leaves the caller's counter alone (crypt advances it
// itself) and writes nothing past dst, in place or not.
func TestCTRMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	key := fill(r, KeySize)
	g := need(t, key)
	lows := []uint32{0, 1, 0x7fffffff, 0xffffffff, 0xfffffffe, 0xfffffff1, 0xfffffff0, 0xffffffef, 0xffffffe0}
	for _, n := range []int{0, 1, 2, 3, 15, 16, 17, 18, 31, 32, 33, 47, 48, 49, 100, 256} {
		for i, low := range lows {
			inPlace, ones := i%2 == 1, i%3 == 0
			name := fmt.Sprintf("blocks=%d,low=%#x,inplace=%v,ones=%v", n, low, inPlace, ones)
			t.Run(name, func(t *testing.T) {
				var counter [16]byte
				copy(counter[:12], fill(r, 12))
				if ones {
					copy(counter[:12], bytes.Repeat([]byte{0xff}, 12))
				}
				binary.BigEndian.PutUint32(counter[12:], low)
				src := fill(r, 16*n)
				want := refCTR(key, counter, src)
				const guard = 64
				buf := bytes.Repeat([]byte{0xa5}, 16*n+guard)
				dst := buf[:16*n]
				if inPlace {
					copy(dst, src)
					src = dst
				}
				before := counter
				ctr(&g.rk, &counter, dst, src)
				if !bytes.Equal(dst, want) {
					j := 0
					for j < len(dst) && dst[j] == want[j] {
						j++
					}
					t.Fatalf("key stream differs from the reference from block %d", j/16)
				}
				if counter != before {
					t.Fatalf("ctr changed the counter block from %x to %x", before, counter)
				}
				if !bytes.Equal(buf[16*n:], bytes.Repeat([]byte{0xa5}, guard)) {
					t.Fatal("ctr wrote past the end of dst")
				}
			})
		}
	}
}

// The two steps alone, which Seal and Open run one after the other: GHASH
// over whole blocks and counter mode.
func BenchmarkSteps(b *testing.B) {
	key := make([]byte, KeySize)
	g := need(b, key)
	for _, n := range []int{4096, 65536} {
		src, dst := make([]byte, n), make([]byte, n)
		b.Run(fmt.Sprintf("ghash/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			var acc [16]byte
			for b.Loop() {
				ghash(&g.htab, &acc, src)
			}
		})
		b.Run(fmt.Sprintf("ctr/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			var counter [16]byte
			for b.Loop() {
				ctr(&g.rk, &counter, dst, src)
			}
		})
	}
}

//go:build linux

package vaesgcm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"syscall"
	"testing"
	"unsafe"
)

// guarded returns a buffer of at least n bytes whose last byte is the last
// byte before a PROT_NONE page: a slice taken from its end that the
// implementation reads or writes one byte past faults instead of passing.
func guarded(t *testing.T, n int) []byte {
	t.Helper()
	page := syscall.Getpagesize()
	size := (n+page-1)/page*page + page
	m, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", size, err)
	}
	t.Cleanup(func() { syscall.Munmap(m) })
	if err := syscall.Mprotect(m[size-page:], syscall.PROT_NONE); err != nil {
		t.Fatalf("mprotect the guard page: %v", err)
	}
	return m[:size-page]
}

// atEnd returns the last n bytes of g (cap exactly n), holding src's bytes.
func atEnd(g []byte, n int, src []byte) []byte {
	b := g[len(g)-n : len(g) : len(g)]
	copy(b, src)
	return b
}

// Plaintext, ciphertext, destination and additional data that end at an
// unmapped page: Seal and Open touch no byte past any of them (the
// assembly reads whole 16- and 64-byte blocks, so a tail handled in place
// would fault here), and still match crypto/cipher. Lengths run over all
// small sizes and around the loops' boundaries and the codec's blocks.
func TestBuffersEndAtGuardPage(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	key, nonce := fill(r, KeySize), fill(r, NonceSize)
	g, ref := need(t, key), stdGCM(t, key)
	var lengths []int
	for n := 0; n <= 300; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537)
	adLengths := []int{0, 1, 15, 16, 17, 25, 63, 64, 65, 300, 4097}
	most := lengths[len(lengths)-1] + TagSize
	src, dst, adBuf := guarded(t, most), guarded(t, most), guarded(t, adLengths[len(adLengths)-1])
	for i, n := range lengths {
		adn := adLengths[i%len(adLengths)]
		t.Run(fmt.Sprintf("len=%d,ad=%d", n, adn), func(t *testing.T) {
			pt := fill(r, n)
			ad := atEnd(adBuf, adn, fill(r, adn))
			want := ref.Seal(nil, nonce, pt, ad)

			sealed := g.Seal(atEnd(dst, n+TagSize, nil)[:0], nonce, atEnd(src, n, pt), ad)
			if !bytes.Equal(sealed, want) {
				t.Fatal("Seal from and into guarded buffers differs from crypto/cipher")
			}
			opened, err := g.Open(atEnd(dst, n, nil)[:0], nonce, atEnd(src, n+TagSize, want), ad)
			if err != nil || !bytes.Equal(opened, pt) {
				t.Fatalf("Open from and into guarded buffers: %v", err)
			}
			inPlace := atEnd(src, n+TagSize, pt)
			if got := g.Seal(inPlace[:0], nonce, inPlace[:n], ad); !bytes.Equal(got, want) {
				t.Fatal("in-place Seal in a guarded buffer differs from crypto/cipher")
			}
			if got, err := g.Open(inPlace[:0], nonce, inPlace, ad); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("in-place Open in a guarded buffer: %v", err)
			}
		})
	}
}

// The guard is real: one byte past a guarded buffer faults.
func TestGuardPageFaults(t *testing.T) {
	b := guarded(t, 100)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() == nil {
			t.Fatal("no fault")
		}
	}()
	past := unsafe.Slice(&b[len(b)-1], 2)
	t.Fatalf("read %#x from the byte after a guarded buffer without a fault", past[1])
}

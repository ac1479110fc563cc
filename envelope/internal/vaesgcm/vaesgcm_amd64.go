//go:build !purego

package vaesgcm

import (
	"crypto/cipher"

	"golang.org/x/sys/cpu"
)

var supported = cpu.X86.HasAVX2 && cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ &&
	cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW &&
	cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ

// Supported reports whether New works on this processor.
func Supported() bool { return supported }

// New returns AES-256-GCM with 16-byte nonces under key, and false if the
// processor lacks AVX2, AVX-512 F and BW, VAES or VPCLMULQDQ (or their
// state is not saved by the OS), or len(key) is not KeySize.
func New(key []byte) (cipher.AEAD, bool) {
	if !supported || len(key) != KeySize {
		return nil, false
	}
	g := new(gcm)
	initKey((*[32]byte)(key), &g.rk, &g.htab)
	return g, true
}

//go:noescape
func initKey(key *[32]byte, rk *[15][32]byte, htab *[64][16]byte)

//go:noescape
func ghash(htab *[64][16]byte, acc *[16]byte, data []byte)

//go:noescape
func ctr(rk *[15][32]byte, counter *[16]byte, dst, src []byte)

//go:build !purego

package vaesgcm

import (
	"crypto/cipher"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// supported is read once, after x/sys/cpu has applied GODEBUG's cpu.*
// switches. Each switch clears only its own flag (cpu.avx512=off clears
// HasAVX512 and leaves HasAVX512F set), so the gate asks for every flag a
// user might clear to rule this code out: AVX and AVX2 for the VEX-encoded
// 256-bit counter mode, AVX-512 (and its F and BW parts) for the 512-bit
// GHASH, VAES and VPCLMULQDQ themselves, and AES and PCLMULQDQ, whose
// absence means the wide forms cannot be there either.
var supported = cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ &&
	cpu.X86.HasAVX && cpu.X86.HasAVX2 &&
	cpu.X86.HasAVX512 && cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW &&
	cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ

// Supported reports whether New works on this processor, as GODEBUG's cpu.*
// switches leave it.
func Supported() bool { return supported }

// New returns AES-256-GCM with 16-byte nonces under key, and false if the
// processor lacks AVX2, AVX-512 F and BW, VAES or VPCLMULQDQ (or their
// state is not saved by the OS, or GODEBUG turned one off), or len(key) is
// not KeySize. The AEAD keeps no reference to key and is safe for
// concurrent use.
func New(key []byte) (cipher.AEAD, bool) {
	if !supported || len(key) != KeySize {
		return nil, false
	}
	g := new(gcm)
	initKey((*[32]byte)(key), &g.rk, &g.htab)
	return g, true
}

// NewIn is New with the expanded key and hash tables placed in mem (at
// least StateSize bytes, zeroed), so that the caller decides where key
// material lives (locked memory) and wipes it: the AEAD must not be used
// once mem is cleared or reused.
func NewIn(key, mem []byte) (cipher.AEAD, bool) {
	if !supported || len(key) != KeySize || len(mem) < StateSize {
		return nil, false
	}
	g := (*gcm)(unsafe.Pointer(unsafe.SliceData(mem)))
	initKey((*[32]byte)(key), &g.rk, &g.htab)
	return g, true
}

//go:noescape
func initKey(key *[32]byte, rk *[15][32]byte, htab *[64][16]byte)

//go:noescape
func ghash(htab *[64][16]byte, acc *[16]byte, data []byte)

//go:noescape
func ctr(rk *[15][32]byte, counter *[16]byte, dst, src []byte)

//go:build cgo

package pkcs11

/*
#include <stdlib.h>
*/
import "C"

import (
	"encoding/binary"
	"unsafe"

	p11 "github.com/miekg/pkcs11"
)

// gcmLayout is one of the two CK_GCM_PARAMS layouts modules take: the
// header's, with ulIvBits, and the 2.40 specification text's, without.
type gcmLayout int32

const (
	gcmWithIVBits gcmLayout = iota + 1
	gcmWithoutIVBits
)

// gcmParams is a CK_GCM_PARAMS whose IV and AAD live in C memory, so a
// token may write its own IV back into the IV buffer after the operation
// (AWS CloudHSM does) and the buffer is still there to read. The caller
// frees it once the operation has ended.
type gcmParams struct {
	mem   unsafe.Pointer // iv (ivLen bytes) then aad
	ivLen int
	raw   []byte
}

// newGCMParams lays out iv and aad in C memory with the given layout.
func newGCMParams(iv, aad []byte, tagBits int, layout gcmLayout) *gcmParams {
	n := len(iv) + len(aad)
	mem := C.calloc(C.size_t(max(n, 1)), 1)
	buf := unsafe.Slice((*byte)(mem), max(n, 1))
	copy(buf, iv)
	copy(buf[len(iv):], aad)
	word := int(unsafe.Sizeof(uintptr(0)))
	ulong := int(unsafe.Sizeof(C.ulong(0)))
	put := func(b []byte, v uint64, size int) []byte {
		if size == 8 {
			return binary.NativeEndian.AppendUint64(b, v)
		}
		return binary.NativeEndian.AppendUint32(b, uint32(v))
	}
	ivPtr := uint64(uintptr(mem))
	aadPtr := uint64(uintptr(mem) + uintptr(len(iv)))
	if len(iv) == 0 {
		ivPtr = 0
	}
	var raw []byte
	raw = put(raw, ivPtr, word)
	raw = put(raw, uint64(len(iv)), ulong)
	if layout == gcmWithIVBits {
		raw = put(raw, uint64(8*len(iv)), ulong)
	}
	raw = put(raw, aadPtr, word)
	raw = put(raw, uint64(len(aad)), ulong)
	raw = put(raw, uint64(tagBits), ulong)
	return &gcmParams{mem: mem, ivLen: len(iv), raw: raw}
}

// mechanism returns CKM_AES_GCM with these parameters.
func (g *gcmParams) mechanism() []*p11.Mechanism {
	return []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, g.raw)}
}

// iv returns a copy of the IV buffer as it is now.
func (g *gcmParams) iv() []byte {
	out := make([]byte, g.ivLen)
	copy(out, unsafe.Slice((*byte)(g.mem), g.ivLen))
	return out
}

// free releases the C memory.
func (g *gcmParams) free() { C.free(g.mem) }

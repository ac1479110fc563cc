package envelope

import (
	"crypto/sha256"
	"hash"
	"sync"
)

// hmacState is the scratch space of one HMAC-SHA256 computation, pooled:
// a file open or create computes four, and crypto/hmac.New allocates two
// digests, both pads and a saved state every time.
type hmacState struct {
	h          hash.Hash
	ipad, opad [sha256.BlockSize]byte
	inner      [sha256.Size]byte
}

var hmacPool = sync.Pool{New: func() any { return &hmacState{h: sha256.New()} }}

// hmacSHA256 appends HMAC-SHA256(key, msg) (RFC 2104) to dst. The key is
// at most one SHA-256 block, as every key here is.
func hmacSHA256(dst, key, msg []byte) []byte {
	if len(key) > sha256.BlockSize {
		panic("envelope: HMAC key longer than a block")
	}
	s := hmacPool.Get().(*hmacState)
	defer hmacPool.Put(s)
	clear(s.ipad[:])
	copy(s.ipad[:], key)
	for i, k := range s.ipad {
		s.ipad[i], s.opad[i] = k^0x36, k^0x5c
	}
	s.h.Reset()
	s.h.Write(s.ipad[:])
	s.h.Write(msg)
	inner := s.h.Sum(s.inner[:0])
	s.h.Reset()
	s.h.Write(s.opad[:])
	s.h.Write(inner)
	dst = s.h.Sum(dst)
	// Leave no key material in the pool.
	clear(s.ipad[:])
	clear(s.opad[:])
	clear(s.inner[:])
	s.h.Reset()
	return dst
}

package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/kmsfs/kmsfs/envelope/internal/vaesgcm"
	"github.com/kmsfs/kmsfs/internal/secmem"
)

// ErrNoGCM means Go's crypto refuses AES-GCM with caller-chosen 16-byte
// nonces, as it does in FIPS 140-only mode (GODEBUG=fips140=only). Every
// block of every file is sealed that way, so no file can be read or
// written.
var ErrNoGCM = errors.New("envelope: AES-GCM with 16-byte nonces is refused")

// GCMStatus says which AES-GCM implementation codecs seal and open blocks
// with. Both produce the same bytes.
type GCMStatus struct {
	// Wide is true when codecs use vaesgcm (VAES and VPCLMULQDQ), false
	// when they use crypto/cipher.
	Wide bool
	// Reason says why codecs use crypto/cipher; empty when Wide.
	Reason string
	// SelfTest is vaesgcm's known-answer self-test failure when that is
	// the reason: on this processor vaesgcm gave other bytes than
	// crypto/cipher, a fault worth reporting. Nil otherwise.
	SelfTest error
}

// gcmChoice is the decision newAEAD follows: an implementation, or an
// error when none may be used.
type gcmChoice struct {
	status GCMStatus
	err    error
}

// processGCM makes the choice on first use and keeps it. It is the one
// piece of package-level state, set once: everything it depends on (the
// processor, GODEBUG, KMSFS_GCM, FIPS 140 mode and the code itself) is the
// same for every Volume and fixed for the life of the process, and the
// self-test is not worth repeating per Volume. Only tests assign it
// (export_test.go).
var processGCM = sync.OnceValue(func() gcmChoice {
	return chooseGCM(os.Getenv("KMSFS_GCM"), fips140.Enabled(), vaesgcm.Supported(), vaesgcm.SelfTest)
})

// chooseGCM picks vaesgcm unless the environment asks for crypto/cipher
// (KMSFS_GCM=go, for comparing the two), FIPS 140 mode is on (AES-GCM then
// stays in Go's cryptographic module), the processor or a GODEBUG cpu.*
// switch rules it out, or its self-test fails; and refuses both when
// crypto/cipher refuses 16-byte nonces, rather than let vaesgcm stand in
// for a module that said no.
func chooseGCM(env string, fips, supported bool, selfTest func() error) gcmChoice {
	if _, err := stdGCM(make([]byte, vaesgcm.KeySize)); err != nil {
		if fips {
			return gcmChoice{err: fmt.Errorf("%w in FIPS 140-only mode (GODEBUG=fips140=only), and every kmsfs block is sealed with a random 16-byte nonce: run without fips140=only (docs/FORMAT.md, Implementations): %v", ErrNoGCM, err)}
		}
		return gcmChoice{err: fmt.Errorf("%w: %v", ErrNoGCM, err)}
	}
	std := func(why string) gcmChoice { return gcmChoice{status: GCMStatus{Reason: why}} }
	switch {
	case env == "go":
		return std("KMSFS_GCM=go")
	case fips:
		return std("FIPS 140 mode: AES-GCM stays in Go's cryptographic module")
	case !supported:
		return std("no VAES, VPCLMULQDQ and AVX-512 on this processor (or GODEBUG turned one off)")
	}
	if err := selfTest(); err != nil {
		c := std("vaesgcm failed its self-test against crypto/cipher")
		c.status.SelfTest = err
		return c
	}
	return gcmChoice{status: GCMStatus{Wide: true}}
}

// GCM reports which AES-GCM implementation codecs use. The first call (or
// the first codec) decides, running vaesgcm's self-test where vaesgcm is
// eligible; later calls return the same answer. It returns an error
// wrapping ErrNoGCM when no implementation may be used. Safe for
// concurrent use.
func GCM() (GCMStatus, error) {
	c := processGCM()
	return c.status, c.err
}

// WideGCM reports whether codecs seal and open with vaesgcm (VAES and
// VPCLMULQDQ), rather than crypto/cipher.
func WideGCM() bool {
	s, err := GCM()
	return err == nil && s.Wide
}

// newAEAD returns AES-256-GCM with nonceSize-byte nonces under key, from
// the implementation processGCM chose. With vaesgcm and an arena, the key
// schedule lives in a cell of mem, returned as state for the caller to
// free (after which the AEAD must not be used); crypto/cipher keeps its
// schedule on the Go heap, where it can be neither locked nor wiped.
func newAEAD(key []byte, mem *secmem.Arena) (aead cipher.AEAD, state []byte, err error) {
	c := processGCM()
	if c.err != nil {
		return nil, nil, c.err
	}
	if c.status.Wide {
		if mem != nil {
			state = mem.Alloc(vaesgcm.StateSize)
			if aead, ok := vaesgcm.NewIn(key, state); ok {
				return aead, state, nil
			}
			mem.Free(state)
		} else if aead, ok := vaesgcm.New(key); ok {
			return aead, nil, nil
		}
	}
	aead, err = stdGCM(key)
	return aead, nil, err
}

// stdGCM is crypto/cipher's AES-GCM with nonceSize-byte nonces.
func stdGCM(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithNonceSize(blk, nonceSize)
}

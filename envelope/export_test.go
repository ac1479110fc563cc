package envelope

import (
	"reflect"
	"sync"

	"github.com/kmsfs/kmsfs/envelope/internal/vaesgcm"
)

// SetWideGCM makes codecs created from now on use vaesgcm (where the
// processor supports it and it passes its self-test) or crypto/cipher, and
// returns the way back.
func SetWideGCM(on bool) (restore func()) {
	if on {
		return SetGCMChoice("", false, vaesgcm.Supported(), vaesgcm.SelfTest)
	}
	return SetGCMChoice("go", false, vaesgcm.Supported(), vaesgcm.SelfTest)
}

// SetGCMChoice makes the choice of AES-GCM as if KMSFS_GCM were env, FIPS
// 140 mode fips, vaesgcm supported or not and its self-test selfTest, for
// codecs created from now on and for GCM; it returns the way back.
func SetGCMChoice(env string, fips, supported bool, selfTest func() error) (restore func()) {
	was := processGCM
	processGCM = sync.OnceValue(func() gcmChoice { return chooseGCM(env, fips, supported, selfTest) })
	return func() { processGCM = was }
}

// CodecGCM names the type of the codec's AEAD, to tell vaesgcm's from
// crypto/cipher's.
func CodecGCM(c *Codec) string { return reflect.TypeOf(c.aead).String() }

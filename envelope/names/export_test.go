package names

import "io"

// SetRand makes c draw its target nonces from r.
func SetRand(c *Codec, r io.Reader) { c.rand = r }

// EncryptTargetNonce is EncryptTarget with a given nonce, for golden
// vectors and for checking that what decrypts re-encrypts alike.
func EncryptTargetNonce(c *Codec, target string, nonce [16]byte) (string, error) {
	return c.encryptTarget(target, nonce)
}

// SealEntry seals padded as an entry of dir without any check, to forge
// authentic names of a form Encrypt never writes.
func SealEntry(c *Codec, dir DirID, padded []byte) []byte {
	sealed, err := c.entries.EncryptDeterministically(padded, dir[:])
	if err != nil {
		panic(err)
	}
	return sealed
}

// LongBacking is the backing name of a long name whose side file holds
// sealed.
func LongBacking(sealed []byte) string { return longBacking(sealed) }

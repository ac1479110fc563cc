package names

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// KeySize is the size in bytes of a volume's name key: 64 random bytes,
// room for the two 256-bit keys a deterministic AEAD such as AES-SIV
// takes (one authenticates, one encrypts).
const KeySize = 64

// keyIDLabel is the HMAC message that derives a key's ID: a fixed label
// no other use of the name key authenticates, so the ID reveals nothing
// a name's ciphertext would.
const keyIDLabel = "kmsfs name key id"

// keyIDSize is how many bytes of the HMAC the ID keeps: 128 bits tell
// keys apart with no chance of a collision worth counting.
const keyIDSize = 16

// GenerateKey returns a fresh name key of KeySize bytes from
// crypto/rand. The caller owns it and clears it when done.
func GenerateKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("names: generate name key: %w", err)
	}
	return key, nil
}

// KeyID returns the ID of a name key: the hex of the first 16 bytes of
// HMAC-SHA256(key, "kmsfs name key id"). kmsfs.conf records it, so a
// name key file swapped for one holding another key is refused, and it
// names the key without revealing it. It does not keep key.
func KeyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyIDLabel))
	return hex.EncodeToString(m.Sum(nil)[:keyIDSize])
}

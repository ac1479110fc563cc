package names

import (
	"encoding/base64"
	"fmt"
	"io"
	"strings"
)

// MaxTargetLen is the longest symlink target, in bytes (PATH_MAX less
// its NUL).
const MaxTargetLen = 4095

// nonceSize is the random associated data of a target.
const nonceSize = 16

// maxTargetEncoded is the longest encoded target DecryptTarget reads: the
// base64url length, 6 bits a character, of the longest sealed target.
const maxTargetEncoded = ((nonceSize+sivSize+MaxTargetLen)*8 + 5) / 6

// EncryptTarget returns the stored form of the symlink target target.
// A random nonce makes equal targets look different; the target is bound
// to no name or directory, so a symlink moves or is renamed as it is.
func (c *Codec) EncryptTarget(target string) (string, error) {
	var nonce [nonceSize]byte
	if _, err := io.ReadFull(c.rand, nonce[:]); err != nil {
		return "", fmt.Errorf("names: symlink target nonce: %w", err)
	}
	return c.encryptTarget(target, nonce)
}

func (c *Codec) encryptTarget(target string, nonce [nonceSize]byte) (string, error) {
	if err := checkTarget(target); err != nil {
		return "", err
	}
	sealed, err := c.targets.EncryptDeterministically([]byte(target), nonce[:])
	if err != nil {
		return "", fmt.Errorf("names: encrypt symlink target: %w", err)
	}
	raw := make([]byte, 0, nonceSize+len(sealed))
	raw = append(append(raw, nonce[:]...), sealed...)
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

// DecryptTarget returns the symlink target whose stored form is enc.
// A form this package does not write gives ErrInvalidName, a changed one
// ErrAuth.
func (c *Codec) DecryptTarget(enc string) (string, error) {
	if len(enc) > maxTargetEncoded {
		return "", fmt.Errorf("names: encrypted symlink target of %d bytes, more than %d: %w", len(enc), maxTargetEncoded, ErrInvalidName)
	}
	raw, err := c.strict.DecodeString(enc)
	if err != nil {
		return "", fmt.Errorf("names: encrypted symlink target is not base64url: %w", ErrInvalidName)
	}
	if len(raw) <= nonceSize+sivSize {
		return "", fmt.Errorf("names: encrypted symlink target of %d bytes is too short: %w", len(raw), ErrInvalidName)
	}
	target, err := c.targets.DecryptDeterministically(raw[nonceSize:], raw[:nonceSize])
	if err != nil {
		return "", fmt.Errorf("names: symlink target: %w", ErrAuth)
	}
	if err := checkTarget(string(target)); err != nil {
		return "", err
	}
	return string(target), nil
}

// TargetFits reports whether the encoded target encoded fits in a symlink
// of the backing filesystem; a longer one is stored elsewhere.
func TargetFits(encoded string) bool { return len(encoded) <= MaxTargetLen }

// checkTarget reports whether target may be a symlink target.
func checkTarget(target string) error {
	switch {
	case target == "":
		return fmt.Errorf("names: symlink target is empty: %w", ErrInvalidName)
	case len(target) > MaxTargetLen:
		return fmt.Errorf("names: symlink target is %d bytes, more than %d: %w", len(target), MaxTargetLen, ErrInvalidName)
	case strings.IndexByte(target, 0) >= 0:
		return fmt.Errorf("names: symlink target contains NUL: %w", ErrInvalidName)
	}
	return nil
}

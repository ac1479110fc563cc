package names

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"github.com/tink-crypto/tink-go/v2/daead/subtle"
)

// Limits and markers of the backing names.
const (
	// MaxNameLen is the longest plaintext name, in bytes, and the longest
	// name the backing filesystem takes.
	MaxNameLen = 255
	// LongPrefix starts the backing name of a long name. Its '.' keeps it
	// apart from every short backing name.
	LongPrefix = "kmsfs.L"
	// LongSuffix ends the name of a long name's side file: backing name +
	// LongSuffix.
	LongSuffix = ".name"
)

const (
	keySize = subtle.AESSIVKeySize
	// sivSize is the synthetic IV that AES-SIV puts before the ciphertext.
	sivSize = 16
	// padTo hides a name's length to this many bytes.
	padTo = 16
	// maxPadded is the padded length of a MaxNameLen name.
	maxPadded = (MaxNameLen + padTo - 1) / padTo * padTo
	// maxShortPadded is the longest padded name whose base64url (6 bits a
	// character) still fits in MaxNameLen; longer ones are long names.
	maxShortPadded = (MaxNameLen*6/8 - sivSize) / padTo * padTo
	// longHashLen is the length of the base64url SHA-256 in a long name.
	longHashLen = (sha256.Size*8 + 5) / 6

	entriesInfo = "kmsfs names: entries"
	targetsInfo = "kmsfs names: symlink targets"
)

// Codec encrypts and decrypts the entry names and symlink targets of one
// volume. It is safe for concurrent use.
type Codec struct {
	entries *subtle.AESSIV
	targets *subtle.AESSIV
	// strict decodes base64url without padding and refuses stray bits in
	// the last character, so every stored name has a single spelling and
	// what decodes re-encrypts to the same string.
	strict *base64.Encoding
	rand   io.Reader
}

// Name is the stored form of one entry name.
type Name struct {
	// Backing is the entry in the cipher dir.
	Backing string
	// Side is, for a long name, the content of its side file, named
	// Backing+LongSuffix in the same directory; nil for a short name.
	Side []byte
}

// New returns a Codec for the volume's 64-byte name key. It keeps only
// keys derived from nameKey, which the caller may wipe.
func New(nameKey []byte) (*Codec, error) {
	if len(nameKey) != keySize {
		return nil, fmt.Errorf("names: name key is %d bytes, want %d", len(nameKey), keySize)
	}
	entries, err := newSIV(nameKey, entriesInfo)
	if err != nil {
		return nil, err
	}
	targets, err := newSIV(nameKey, targetsInfo)
	if err != nil {
		return nil, err
	}
	return &Codec{entries: entries, targets: targets, strict: base64.RawURLEncoding.Strict(), rand: rand.Reader}, nil
}

// newSIV derives one purpose's key, so a sealed entry name can never be
// passed off as a target or the reverse.
func newSIV(nameKey []byte, info string) (*subtle.AESSIV, error) {
	// AESSIV keeps the slice it is given: a fresh one, owned by it.
	k, err := hkdf.Key(sha256.New, nameKey, nil, info, keySize)
	if err != nil {
		return nil, fmt.Errorf("names: derive %q key: %w", info, err)
	}
	siv, err := subtle.NewAESSIV(k)
	if err != nil {
		return nil, fmt.Errorf("names: %q key: %w", info, err)
	}
	return siv, nil
}

// Encrypt returns the stored form of name, an entry of the directory dir.
// It is deterministic: the same dir and name give the same Name.
func (c *Codec) Encrypt(dir DirID, name string) (Name, error) {
	if err := checkName(name); err != nil {
		return Name{}, err
	}
	var buf [maxPadded]byte
	padded := buf[:paddedLen(copy(buf[:], name))]
	sealed, err := c.entries.EncryptDeterministically(padded, dir[:])
	if err != nil {
		return Name{}, fmt.Errorf("names: encrypt: %w", err)
	}
	if len(padded) <= maxShortPadded {
		return Name{Backing: base64.RawURLEncoding.EncodeToString(sealed)}, nil
	}
	return Name{Backing: longBacking(sealed), Side: sealed}, nil
}

// Decrypt returns the plaintext name of the short backing name backing in
// the directory dir. For a long name it returns ErrLong; anything that is
// not an encrypted name gives ErrInvalidName, a changed or moved one
// ErrAuth.
func (c *Codec) Decrypt(dir DirID, backing string) (string, error) {
	if IsLong(backing) {
		return "", fmt.Errorf("names: %q: %w", backing, ErrLong)
	}
	if len(backing) > MaxNameLen || IsSpecial(backing) {
		return "", fmt.Errorf("names: %q is not an encrypted name: %w", backing, ErrInvalidName)
	}
	sealed, err := c.strict.DecodeString(backing)
	if err != nil {
		return "", fmt.Errorf("names: %q is not base64url: %w", backing, ErrInvalidName)
	}
	if len(sealed) < sivSize+padTo || (len(sealed)-sivSize)%padTo != 0 {
		return "", fmt.Errorf("names: %q decodes to %d bytes, not an encrypted name: %w", backing, len(sealed), ErrInvalidName)
	}
	return c.open(dir, backing, sealed)
}

// DecryptLong returns the plaintext name of the long backing name backing
// in the directory dir, whose side file holds side. A side file of
// another entry gives ErrAuth.
func (c *Codec) DecryptLong(dir DirID, backing string, side []byte) (string, error) {
	if !IsLong(backing) || len(backing) != len(LongPrefix)+longHashLen {
		return "", fmt.Errorf("names: %q is not a long name: %w", backing, ErrInvalidName)
	}
	// Only names too long for a short backing name are stored long, so
	// each name has a single stored form.
	if n := len(side) - sivSize; n <= maxShortPadded || n > maxPadded || n%padTo != 0 {
		return "", fmt.Errorf("names: side file of %q holds %d bytes, not an encrypted long name: %w", backing, len(side), ErrInvalidName)
	}
	if longBacking(side) != backing {
		return "", fmt.Errorf("names: side file of %q belongs to another name: %w", backing, ErrAuth)
	}
	return c.open(dir, backing, side)
}

// open authenticates sealed under dir and checks that it holds a
// canonically padded valid name.
func (c *Codec) open(dir DirID, backing string, sealed []byte) (string, error) {
	padded, err := c.entries.DecryptDeterministically(sealed, dir[:])
	if err != nil {
		return "", fmt.Errorf("names: %q: %w", backing, ErrAuth)
	}
	name := string(bytes.TrimRight(padded, "\x00"))
	if paddedLen(len(name)) != len(padded) || checkName(name) != nil {
		return "", fmt.Errorf("names: %q holds a name this package does not write: %w", backing, ErrInvalidName)
	}
	return name, nil
}

// IsSpecial reports whether backing cannot be a short encrypted name (it
// contains a '.'): kmsfs's own files, long names and their side files.
func IsSpecial(backing string) bool { return strings.Contains(backing, ".") }

// IsLong reports whether backing is the entry of a long name (LongPrefix
// and no further '.'), and not its side file.
func IsLong(backing string) bool {
	rest, ok := strings.CutPrefix(backing, LongPrefix)
	return ok && !strings.Contains(rest, ".")
}

// checkName reports whether name may be a directory entry.
func checkName(name string) error {
	var why string
	switch {
	case name == "":
		why = "is empty"
	case len(name) > MaxNameLen:
		why = fmt.Sprintf("has %d bytes, more than %d", len(name), MaxNameLen)
	case name == "." || name == "..":
		why = "is . or .."
	case strings.IndexByte(name, '/') >= 0:
		why = "contains '/'"
	case strings.IndexByte(name, 0) >= 0:
		why = "contains NUL"
	default:
		return nil
	}
	// The name itself stays out of the error, which may reach a log.
	return fmt.Errorf("names: name %s: %w", why, ErrInvalidName)
}

// paddedLen rounds n up to a multiple of padTo, at least padTo.
func paddedLen(n int) int {
	return max(padTo, (n+padTo-1)/padTo*padTo)
}

// longBacking names the entry of a long name by a hash of its sealed
// form, which the side file holds.
func longBacking(sealed []byte) string {
	sum := sha256.Sum256(sealed)
	return LongPrefix + base64.RawURLEncoding.EncodeToString(sum[:])
}

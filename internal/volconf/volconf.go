// Package volconf reads and writes kmsfs.conf, the volume configuration at
// the root of a cipher dir: format version, volume ID, layout, key
// specifications and data-key policy. It holds no secrets. Unknown
// versions and feature flags refuse to load, with a message that says so.
package volconf

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/safeopen"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
)

// Name is the file name of the configuration in the cipher dir.
const Name = "kmsfs.conf"

// JournalName is the write journal's directory at the root of a cipher
// dir.
const JournalName = "kmsfs.journal"

// NamesName is the volume's name key file at the root of a cipher dir: a
// cipher file of the volume whose plaintext is the name key.
const NamesName = "kmsfs.names"

// Version is the configuration version this kmsfs writes and reads.
const Version = 1

// FeatureEncryptedNames is the feature flag of a volume whose file names
// and symlink targets are encrypted under the name key in NamesName.
const FeatureEncryptedNames = "encrypted-names"

// knownFeatures lists the feature flags this version understands. It is
// a function, not a package variable, so nothing can change the set.
func knownFeatures(f string) bool {
	return f == FeatureEncryptedNames
}

// Conf is the content of kmsfs.conf.
type Conf struct {
	Version       int      `json:"version"`
	VolumeID      string   `json:"volume_id"` // 32 hex digits
	FormatVersion int      `json:"format_version"`
	BlockSize     int      `json:"block_size"`
	SlotSize      int      `json:"header_slot_size"`
	DataKeyPolicy string   `json:"data_key_policy"`
	Keys          []Key    `json:"keys"` // the first generates data keys; the others hold escrow stanzas
	Features      []string `json:"features"`
	// NameKeyID is names.KeyID of the name key in NamesName; set iff
	// Features holds FeatureEncryptedNames. The trust anchor pins it,
	// so a name key file replaced in the cipher dir is refused.
	NameKeyID string `json:"name_key_id,omitempty"`
}

// EncryptedNames reports whether the volume encrypts names.
func (c *Conf) EncryptedNames() bool {
	return slices.Contains(c.Features, FeatureEncryptedNames)
}

// Key is one key source of the volume.
type Key struct {
	// Spec is the key as given to kmsfs init (awskms:alias/NAME,
	// pkcs11:token=…;object=…?…, local:/path, local:passphrase).
	Spec string `json:"spec"`
	// KeyID is the ID the source writes into stanzas; for AWS the key ARN
	// the alias resolved to at init.
	KeyID string `json:"key_id"`
	// KDF holds the passphrase parameters of local:passphrase.
	KDF *local.KDFParams `json:"kdf,omitempty"`
	// PublicKeySHA256 is the fingerprint of an AWS RSA key's public key
	// (awskms.Fingerprint), recorded at init: a public key given later
	// (--public-key-file) must match it.
	PublicKeySHA256 string `json:"public_key_sha256,omitempty"`
	// Retiring marks a key a rewrap is taking out of the volume: it only
	// unwraps the files not yet rewrapped, never wraps a new data key,
	// and leaves kmsfs.conf once no file depends on it. Retiring keys
	// come after the others.
	Retiring bool `json:"retiring,omitempty"`
}

// Active returns the keys that wrap new data keys, primary first: every
// key but the retiring ones.
func (c *Conf) Active() []Key {
	return c.Keys[:c.ActiveCount()]
}

// ActiveCount returns the number of keys that are not retiring.
func (c *Conf) ActiveCount() int {
	for i, k := range c.Keys {
		if k.Retiring {
			return i
		}
	}
	return len(c.Keys)
}

// NewVolumeID returns a random volume ID.
func NewVolumeID() (envelope.VolumeID, error) {
	var id envelope.VolumeID
	_, err := rand.Read(id[:])
	return id, err
}

// ID returns the volume ID.
func (c *Conf) ID() (envelope.VolumeID, error) {
	var id envelope.VolumeID
	b, err := hex.DecodeString(c.VolumeID)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("volconf: volume_id %q is not 32 hex digits", c.VolumeID)
	}
	copy(id[:], b)
	return id, nil
}

// Layout returns the volume's envelope layout.
func (c *Conf) Layout() (envelope.Layout, error) { return envelope.NewLayout(c.BlockSize, c.SlotSize) }

// Policy returns the data-key reuse policy.
func (c *Conf) Policy() (keysource.Policy, error) { return keysource.ParsePolicy(c.DataKeyPolicy) }

// Check validates everything a mount depends on.
func (c *Conf) Check() error {
	if c.Version != Version {
		return fmt.Errorf("volconf: configuration version %d; this kmsfs understands version %d (upgrade kmsfs)", c.Version, Version)
	}
	if c.FormatVersion < envelope.MinVersion || c.FormatVersion > envelope.Version {
		return fmt.Errorf("volconf: file format version %d; this kmsfs reads versions %d to %d (upgrade kmsfs)", c.FormatVersion, envelope.MinVersion, envelope.Version)
	}
	for i, f := range c.Features {
		if !knownFeatures(f) {
			return fmt.Errorf("volconf: feature %q is unknown to this kmsfs (upgrade kmsfs)", f)
		}
		if slices.Contains(c.Features[:i], f) {
			return fmt.Errorf("volconf: feature %q is listed twice", f)
		}
	}
	switch {
	case c.EncryptedNames() && !validKeyID(c.NameKeyID):
		return fmt.Errorf("volconf: feature %q needs name_key_id (32 hex digits), have %q", FeatureEncryptedNames, c.NameKeyID)
	case !c.EncryptedNames() && c.NameKeyID != "":
		return fmt.Errorf("volconf: name_key_id is set but feature %q is not: refused", FeatureEncryptedNames)
	}
	if _, err := c.ID(); err != nil {
		return err
	}
	if _, err := c.Layout(); err != nil {
		return fmt.Errorf("volconf: %w", err)
	}
	if _, err := c.Policy(); err != nil {
		return fmt.Errorf("volconf: %w", err)
	}
	if len(c.Keys) == 0 {
		return errors.New("volconf: no keys configured")
	}
	if c.Keys[0].Retiring {
		return errors.New("volconf: the primary key (key 1) is marked retiring: refused")
	}
	for i, k := range c.Keys {
		if k.Retiring && i < len(c.Keys)-1 && !c.Keys[i+1].Retiring {
			return fmt.Errorf("volconf: key %d is retiring but key %d after it is not: retiring keys come last", i+1, i+2)
		}
		if _, err := keysource.ParseSpec(k.Spec); err != nil {
			return fmt.Errorf("volconf: key %d: %w", i+1, err)
		}
		// Without a key ID nothing ties the key that opens to the key the
		// volume was made with.
		if k.KeyID == "" {
			return fmt.Errorf("volconf: key %d (%s) has no key_id: refused (every key must name its key ID)", i+1, k.Spec)
		}
		// A passphrase's KDF below the floor is refused before anything
		// compares it with what the host approved: lowering the cost
		// makes the passphrase cheap to guess, whoever approves it.
		if k.KDF != nil {
			if err := k.KDF.Check(); err != nil {
				return fmt.Errorf("volconf: key %d (%s): %w", i+1, k.Spec, err)
			}
		}
	}
	return nil
}

// validKeyID reports whether id looks like a names.KeyID: 32 lowercase
// hex digits.
func validKeyID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// MaxSize bounds the size of kmsfs.conf: a configuration is a few hundred
// bytes, and the file comes from untrusted storage.
const MaxSize = 1 << 20

// Load reads and checks dir's kmsfs.conf. The cipher dir is untrusted
// storage, so the file is opened relative to the directory's descriptor
// without following a symlink and without blocking on a FIFO, must be a
// regular file of at most MaxSize bytes, and is parsed only then.
func Load(dir string) (*Conf, error) {
	p := filepath.Join(dir, Name)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("volconf: cipher dir %s does not exist", dir)
		}
		return nil, fmt.Errorf("volconf: cipher dir %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	raw, _, err := readRegularAt(dfd, Name)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("volconf: %s is not a kmsfs cipher dir (no %s; run kmsfs init first)", dir, Name)
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("volconf: %s is a symbolic link: refused (kmsfs.conf must be a regular file in the cipher dir)", p)
	case errors.Is(err, errNotRegular) || errors.Is(err, errTooLarge):
		return nil, fmt.Errorf("volconf: %s %w", p, err)
	case err != nil:
		return nil, fmt.Errorf("volconf: %s: %w", p, err)
	}
	var c Conf
	if err := decodeStrict(raw, &c); err != nil {
		return nil, fmt.Errorf("volconf: %s is corrupt or from another kmsfs version: %v", p, err)
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, p)
	}
	return &c, nil
}

// errNotRegular and errTooLarge are readRegularAt's refusals; their text
// follows the file's name.
var (
	errNotRegular = errors.New("is not a regular file: refused")
	errTooLarge   = fmt.Errorf("holds more than %d bytes: refused", MaxSize)
)

// readRegularAt reads the file name in the directory dfd, opened with
// safeopen.OpenAt (no symbolic link followed: unix.ELOOP; nothing but a
// regular file opened: errNotRegular) and of at most MaxSize bytes
// (errTooLarge) before a byte is read. It returns the bytes and the
// file's stat.
func readRegularAt(dfd int, name string) ([]byte, *unix.Stat_t, error) {
	fd, st, err := safeopen.OpenAt(dfd, name, unix.O_RDONLY, unix.S_IFREG)
	var wt *safeopen.WrongType
	switch {
	case errors.As(err, &wt) && wt.Mode&unix.S_IFMT == unix.S_IFLNK:
		return nil, nil, unix.ELOOP
	case wt != nil:
		return nil, nil, errNotRegular
	case err != nil:
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if st.Size > MaxSize {
		return nil, nil, errTooLarge
	}
	// The file may grow after fstat: read one byte past the bound to see it.
	raw, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(raw) > MaxSize {
		return nil, nil, errTooLarge
	}
	return raw, &st, nil
}

// decodeStrict parses JSON into v, refusing fields v does not have.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Save writes c to dir's kmsfs.conf atomically: a temporary file, fsync,
// rename, fsync of the directory.
func Save(dir string, c *Conf) error {
	if err := c.Check(); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, Name+".tmp-*")
	if err != nil {
		return fmt.Errorf("volconf: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(raw, '\n'))
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, Name))
	}
	if err != nil {
		return fmt.Errorf("volconf: write %s: %w", filepath.Join(dir, Name), err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("volconf: %w", err)
	}
	defer d.Close()
	return d.Sync()
}

// Setting these extended attributes (any value) through a kmsfs mount
// asks its daemon, if the caller is root or the user it runs as:
// ReloadAttr on the mount's root to reload kmsfs.conf's keys, RewrapAttr
// on a file to rewrap it to them. A read-only mount takes no setxattr:
// reading ReloadAttr asks it to reload. They never reach the cipher dir.
const (
	ReloadAttr = "user.kmsfs.reload"
	RewrapAttr = "user.kmsfs.rewrap"
)

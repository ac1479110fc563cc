package names

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// DirIDFile is the name of the symbolic link in each directory of the
// cipher dir whose target is the directory's DirID (LinkTarget). A link
// rather than a file holding the bytes: making it is metadata only, which
// the backing filesystem's journal orders before the rename that puts the
// new directory in place, so a mkdir needs no fsync and a crash cannot
// leave a directory whose ID was never written. The root directory has
// none: its DirID is RootDirID of the volume.
const DirIDFile = "kmsfs.dirid"

// dirIDEncoding writes a DirID as a link target: base64url without
// padding, and strict, so that an ID has one stored form.
var dirIDEncoding = base64.RawURLEncoding.Strict()

// dirIDLinkLen is the length of a DirID's link target.
const dirIDLinkLen = (16*8 + 5) / 6

// rootLabel separates the root directory's derived ID from any other
// hash of a volume ID.
const rootLabel = "kmsfs names: root directory\x00"

// DirID is the identity of a directory, the associated data of the names
// of its entries. It is random and stays with the directory for life, so
// a rename of the directory keeps its children's backing names valid.
type DirID [16]byte

// NewDirID draws a random DirID for a new directory.
func NewDirID() (DirID, error) {
	var d DirID
	if _, err := rand.Read(d[:]); err != nil {
		return DirID{}, fmt.Errorf("names: new directory ID: %w", err)
	}
	return d, nil
}

// ParseDirID reads a DirID of exactly 16 bytes. It copies b, which the
// caller keeps.
func ParseDirID(b []byte) (DirID, error) {
	var d DirID
	if len(b) != len(d) {
		return DirID{}, fmt.Errorf("names: %s holds %d bytes, want %d: %w", DirIDFile, len(b), len(d), ErrInvalidName)
	}
	copy(d[:], b)
	return d, nil
}

// ParseDirIDLink reads the target of a DirIDFile: the 22 characters
// LinkTarget writes, nothing else.
func ParseDirIDLink(target string) (DirID, error) {
	var d DirID
	if len(target) != dirIDLinkLen {
		return DirID{}, fmt.Errorf("names: %s points to %d bytes, want %d: %w", DirIDFile, len(target), dirIDLinkLen, ErrInvalidName)
	}
	n, err := dirIDEncoding.Decode(d[:], []byte(target))
	if err != nil || n != len(d) {
		return DirID{}, fmt.Errorf("names: %s points to no base64url directory ID: %w", DirIDFile, ErrInvalidName)
	}
	return d, nil
}

// LinkTarget returns the target of the DirIDFile of the directory d.
func (d DirID) LinkTarget() string { return dirIDEncoding.EncodeToString(d[:]) }

// Bytes returns the ID's 16 bytes, in a new slice.
func (d DirID) Bytes() []byte { return append([]byte(nil), d[:]...) }

// RootDirID derives the DirID of a volume's root directory from the
// volume ID, so the root needs no DirIDFile of its own (a planted or
// deleted one cannot change it) and no two volumes share it.
func RootDirID(volumeID [16]byte) DirID {
	h := sha256.New()
	h.Write([]byte(rootLabel))
	h.Write(volumeID[:])
	var d DirID
	copy(d[:], h.Sum(nil))
	return d
}

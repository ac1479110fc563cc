package names

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// DirIDFile is the name of the file in each directory of the cipher dir
// that holds the directory's DirID (its 16 bytes, nothing else). The root
// directory has none: its DirID is RootDirID of the volume.
const DirIDFile = "kmsfs.dirid"

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

// ParseDirID reads the content of a DirIDFile: exactly 16 bytes. It copies
// b, which the caller keeps.
func ParseDirID(b []byte) (DirID, error) {
	var d DirID
	if len(b) != len(d) {
		return DirID{}, fmt.Errorf("names: %s holds %d bytes, want %d: %w", DirIDFile, len(b), len(d), ErrInvalidName)
	}
	copy(d[:], b)
	return d, nil
}

// Bytes returns the 16 bytes to store in a DirIDFile, in a new slice.
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

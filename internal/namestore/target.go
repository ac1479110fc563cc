package namestore

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// A symbolic link whose encrypted target is too long for a backing symlink
// holds a marker instead, and its stored target is in a side file in the
// same directory (docs/FORMAT.md). The side file is named by a random ID
// that the marker holds, so it moves with the symlink and a rename moves
// only the entry. The old form, the bare marker with the side file named by
// the entry, is still read.
const (
	// LongTargetMarker is the old form's marker, exactly; the new form's
	// is it, a '.' and the ID.
	LongTargetMarker = "kmsfs.longtarget"
	// TargetSuffix ends the name of a long target's side file.
	TargetSuffix = ".target"
	// targetSidePrefix starts the name of an ID-named side file: with its
	// '.', the name is special and never listed.
	targetSidePrefix = "kmsfs.T"
	// targetIDLen is the length of an encoded 16-byte ID.
	targetIDLen = (16*8 + 5) / 6
	// MarkerLen is the length of the new form's marker.
	MarkerLen = len(LongTargetMarker) + 1 + targetIDLen
)

// targetIDEncoding writes an ID strictly, so that each ID has one form.
var targetIDEncoding = base64.RawURLEncoding.Strict()

// NewTargetMarker draws a new ID and returns the backing symlink target
// that holds it and the name of its side file.
func NewTargetMarker() (marker, side string, err error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("namestore: long target ID: %w", err)
	}
	id := targetIDEncoding.EncodeToString(b[:])
	return LongTargetMarker + "." + id, targetSidePrefix + id + TargetSuffix, nil
}

// TargetSide returns the name of the side file holding the stored target
// of the backing symlink backing whose target is stored: "" if stored is
// no marker (the target is in the symlink), the ID-named side file for the
// new form (byID), the entry-named one for the old. A marker with a
// malformed ID is an error wrapping names.ErrInvalidName: it names no
// side file, and nothing it holds is ever used as a name.
func TargetSide(backing, stored string) (side string, byID bool, err error) {
	if stored == LongTargetMarker {
		return backing + TargetSuffix, false, nil
	}
	if !strings.HasPrefix(stored, LongTargetMarker) {
		return "", false, nil // an encrypted target is base64url: never a '.'
	}
	id, ok := strings.CutPrefix(stored, LongTargetMarker+".")
	if !ok || !validTargetID(id) {
		return "", false, fmt.Errorf("namestore: symlink %s holds a malformed long-target marker: %w", backing, names.ErrInvalidName)
	}
	return targetSidePrefix + id + TargetSuffix, true, nil
}

// IsTargetSide reports whether name is the name of an ID-named long
// target's side file.
func IsTargetSide(name string) bool {
	rest, ok := strings.CutPrefix(name, targetSidePrefix)
	if !ok {
		return false
	}
	id, ok := strings.CutSuffix(rest, TargetSuffix)
	return ok && validTargetID(id)
}

// validTargetID reports whether id is the one encoded form of a 16-byte ID.
func validTargetID(id string) bool {
	if len(id) != targetIDLen {
		return false
	}
	b, err := targetIDEncoding.DecodeString(id)
	return err == nil && len(b) == 16
}

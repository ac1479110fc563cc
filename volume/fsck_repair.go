package volume

import (
	"fmt"
	"os"

	"github.com/kmsfs/kmsfs/envelope"
)

// fsckBacking is a cipher file fsck opened, which tells the journal its
// path so that a record of a repair a crash interrupted finds the file at
// the next mount.
type fsckBacking struct {
	*os.File
	rel string
}

// JournalHint returns the file's path relative to the cipher dir.
func (b fsckBacking) JournalHint() string { return b.rel }

// fsckRemnants records the crash remnants among the blocks of f, which
// fsckBlocks has read, and with repair reseals them if the file is
// otherwise intact: a damaged file is left exactly as found.
func (v *Volume) fsckRemnants(f *envelope.File, r *FsckFile, repair bool) {
	bs := int64(v.Format.Layout().BlockSize())
	found, err := f.Remnants()
	for _, i := range found {
		r.Remnants = append(r.Remnants, FsckBlock{Index: i, Offset: i * bs})
	}
	if err != nil {
		r.State, r.Detail = FsckUnreadable, err.Error()
		return
	}
	if len(found) == 0 || r.State != FsckOK {
		return
	}
	if repair {
		n, err := f.ClearRemnants()
		r.RemnantsCleared = n
		if err == nil && n == len(found) {
			return
		}
		if err == nil {
			err = fmt.Errorf("%d of %d left", len(found)-n, len(found))
		}
		r.State, r.Detail = FsckCrashRemnants, fmt.Sprintf("volume: fsck: clear crash remnants of %s: %v", r.Path, err)
		return
	}
	r.State = FsckCrashRemnants
	r.Detail = fmt.Sprintf("%d blocks are crash remnants (sealed as the last block, which they are not); they read correctly, and kmsfs fsck --repair reseals them", len(found))
}

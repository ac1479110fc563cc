package volume_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/volume"
)

// cutFails is a cipher file on which the process dies before a truncate
// cuts it: writes land, the cut never does.
type cutFails struct{ *os.File }

var errCrash = errors.New("crash before the cut")

func (cutFails) Truncate(int64) error { return errCrash }

// plantRemnant is the crash in the middle of a truncate of the file at p
// to two blocks: block 1 is resealed marked last, and the process dies
// before the file is cut, leaving a crash remnant.
func plantRemnant(t *testing.T, v *volume.Volume, p string) {
	t.Helper()
	b, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f, err := v.Format.Open(ctx(t), cutFails{b}, v.Keys)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(2 * int64(v.Format.Layout().BlockSize())); !errors.Is(err, errCrash) {
		t.Fatalf("truncate: %v, want the crash", err)
	}
}

// TestFsckCrashRemnants is the crash that stops a truncate between its
// two steps: the file reads as before, but block 1 is sealed marked last.
// A read-only fsck reports the remnant (block and offset) and does not
// call the volume clean; fsck --repair reseals it, after which the volume
// is clean and the file decrypts to the same plaintext. A file that is
// also damaged is reported and left byte for byte as it was.
func TestFsckCrashRemnants(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%t", damaged), func(t *testing.T) {
			tv := initVolume(t)
			rw, err := tv.open(t, volume.Options{})
			if err != nil {
				t.Fatalf("Open read-write: %v", err)
			}
			l := rw.Format.Layout()
			bs := int64(l.BlockSize())
			plain := randomBytes(t, fsckSize(rw))
			encryptTo(t, rw, filepath.Join(rw.Dir, "intact"), randomBytes(t, fsckSize(rw)))
			p := filepath.Join(rw.Dir, "victim")
			encryptTo(t, rw, p, plain)
			plantRemnant(t, rw, p)
			if damaged {
				flip(t, p, l.BlockOffset(3)+5)
			}
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			wantState := volume.FsckCrashRemnants
			if damaged {
				wantState = volume.FsckDamaged
			}

			for _, repair := range []bool{false, true} {
				r, err := rw.Fsck(ctx(t), volume.FsckOptions{Repair: repair})
				if err != nil {
					t.Fatalf("Fsck(repair=%t): %v", repair, err)
				}
				if r.Files != 2 || r.OK != 1 || len(r.Problems) != 1 {
					t.Fatalf("repair=%t: report %+v; want the victim alone named", repair, r)
				}
				got := r.Problems[0]
				if len(got.Remnants) != 1 || got.Remnants[0] != (volume.FsckBlock{Index: 1, Offset: bs}) {
					t.Fatalf("repair=%t: remnants %+v, want block 1 at offset %d", repair, got.Remnants, bs)
				}
				cleared := repair && !damaged
				state := wantState
				if cleared {
					state = volume.FsckOK
				}
				if got.State != state || r.Clean() != cleared || (got.RemnantsCleared == 1) != cleared || (r.RemnantsCleared == 1) != cleared {
					t.Fatalf("repair=%t: %+v, clean %t", repair, got, r.Clean())
				}
			}
			after, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if damaged {
				if !bytes.Equal(after, raw) {
					t.Fatal("repair changed a damaged file")
				}
				return
			}
			if bytes.Equal(after, raw) || len(after) != len(raw) {
				t.Fatal("repair did not reseal the remnant in place")
			}
			r, err := rw.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil || !r.Clean() || r.OK != 2 {
				t.Fatalf("fsck after the repair: %+v, %v; want clean", r, err)
			}
			out := filepath.Join(t.TempDir(), "plain")
			if err := decryptFile(t, rw, p, out); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("after the repair the file decrypts differently (%v)", err)
			}
		})
	}
}

// TestFsckRepairNeedsJournal: --repair on a read-only volume is refused
// before anything is read.
func TestFsckRepairNeedsJournal(t *testing.T) {
	_, v := cryptVolume(t)
	if _, err := v.Fsck(ctx(t), volume.FsckOptions{Repair: true}); err == nil {
		t.Fatal("repair of a read-only volume: no error")
	}
}

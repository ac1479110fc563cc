package volume_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/volume"
)

// fsckSize is the plaintext size of the files the fsck tests write:
// four whole blocks and part of a fifth.
func fsckSize(v *volume.Volume) int { return 4*v.Format.Layout().BlockSize() + 100 }

// flip inverts the byte at off of the file at p.
func flip(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestFsckClean(t *testing.T) {
	_, v := cryptVolume(t)
	for _, name := range []string{"a", "sub/b", "sub/deeper/c"} {
		p := filepath.Join(v.Dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		encryptTo(t, v, p, randomBytes(t, fsckSize(v)))
	}
	r, err := v.Fsck(ctx(t), volume.FsckOptions{})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if !r.Clean() || r.Files != 3 || r.OK != 3 {
		t.Fatalf("clean volume reported %+v", r)
	}
}

func TestFsckFindsDamage(t *testing.T) {
	type want struct {
		state     string
		blocks    []int64
		slots     []int
		truncated bool
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, v *volume.Volume, p string)
		want   want
	}{
		{"flipped-byte-in-block-1", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			flip(t, p, l.BlockOffset(1)+10)
		}, want{state: volume.FsckDamaged, blocks: []int64{1}}},
		{"flipped-bytes-in-blocks-0-and-3", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			flip(t, p, l.BlockOffset(0)+10)
			flip(t, p, l.BlockOffset(3)+10)
		}, want{state: volume.FsckDamaged, blocks: []int64{0, 3}}},
		{"flipped-byte-in-header-slot-1", func(t *testing.T, v *volume.Volume, p string) {
			flip(t, p, int64(2*v.Format.Layout().SlotSize()-1))
		}, want{state: volume.FsckDamaged, slots: []int{1}}},
		{"flipped-byte-in-both-header-slots", func(t *testing.T, v *volume.Volume, p string) {
			ss := int64(v.Format.Layout().SlotSize())
			flip(t, p, ss-1)
			flip(t, p, 2*ss-1)
		}, want{state: volume.FsckDamaged, slots: []int{0, 1}}},
		{"truncated-mid-block", func(t *testing.T, v *volume.Volume, p string) {
			if err := os.Truncate(p, v.Format.Layout().BlockOffset(2)+40); err != nil {
				t.Fatal(err)
			}
		}, want{state: volume.FsckDamaged, blocks: []int64{2}, truncated: true}},
		{"truncated-at-block-boundary", func(t *testing.T, v *volume.Volume, p string) {
			if err := os.Truncate(p, v.Format.Layout().BlockOffset(3)); err != nil {
				t.Fatal(err)
			}
		}, want{state: volume.FsckDamaged, blocks: []int64{2}, truncated: true}},
		{"blocks-1-and-2-swapped", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			sb := l.SealedBlockSize()
			o1, o2 := l.BlockOffset(1), l.BlockOffset(2)
			b1 := slices.Clone(b[o1 : o1+sb])
			copy(b[o1:], b[o2:o2+sb])
			copy(b[o2:], b1)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want{state: volume.FsckDamaged, blocks: []int64{1, 2}}},
		{"foreign-file", func(t *testing.T, v *volume.Volume, p string) {
			if err := os.WriteFile(p, []byte("not a kmsfs file, only some words long enough to be looked at"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want{state: volume.FsckForeign}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, v := cryptVolume(t)
			encryptTo(t, v, filepath.Join(v.Dir, "intact"), randomBytes(t, fsckSize(v)))
			p := filepath.Join(v.Dir, "victim")
			encryptTo(t, v, p, randomBytes(t, fsckSize(v)))
			tc.damage(t, v, p)
			r, err := v.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if r.Clean() || r.Files != 2 || r.OK != 1 || len(r.Problems) != 1 {
				t.Fatalf("report %+v: want the intact file ok and the victim named", r)
			}
			got := r.Problems[0]
			var blocks []int64
			for _, b := range got.Blocks {
				if b.Offset != b.Index*int64(v.Format.Layout().BlockSize()) {
					t.Errorf("block %d at plaintext offset %d", b.Index, b.Offset)
				}
				blocks = append(blocks, b.Index)
			}
			if got.Path != "victim" || got.State != tc.want.state || !slices.Equal(blocks, tc.want.blocks) ||
				!slices.Equal(got.BadSlots, tc.want.slots) || got.Truncated != tc.want.truncated {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestFsckJournalRemnants is the crash that leaves a record in the
// journal: a read-only fsck opens no journal, yet names the slot that
// holds a record and does not call the volume clean; a cleared slot (all
// zeros, as the journal leaves it) is not reported.
func TestFsckJournalRemnants(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content []byte
		want    []string
	}{
		{"cleared-slot", make([]byte, 4096), nil},
		{"slot-with-record", append(make([]byte, 8), 1), []string{"slot-0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, v := cryptVolume(t)
			encryptTo(t, v, filepath.Join(v.Dir, "f"), randomBytes(t, 1000))
			jd := filepath.Join(v.Dir, volume.JournalName)
			if err := os.MkdirAll(jd, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(jd, "slot-0"), tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := v.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if !slices.Equal(r.Journal, tc.want) || r.Clean() != (tc.want == nil) || r.OK != 1 {
				t.Fatalf("report %+v: want journal entries %v", r, tc.want)
			}
		})
	}
}

// TestFsckRepairAppliesJournal is the crash in the middle of a write: a
// block is torn on disk while the journal holds the record that finishes
// it. Read-only fsck reports the torn block and the journal slot; fsck
// --repair (a read-write volume) applies the record, and only then is the
// volume clean.
func TestFsckRepairAppliesJournal(t *testing.T) {
	tv := initVolume(t)
	ro, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	p := filepath.Join(ro.Dir, "f")
	encryptTo(t, ro, p, randomBytes(t, fsckSize(ro)))
	l := ro.Format.Layout()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ro.Format.Open(ctx(t), b, ro.Keys)
	if err != nil {
		t.Fatal(err)
	}
	id := f.ID()
	f.Close()
	b.Close()
	ro.Close()

	rw, err := tv.open(t, volume.Options{})
	if err != nil {
		t.Fatalf("Open read-write: %v", err)
	}
	at := l.BlockOffset(1)
	body := slices.Clone(raw[at : at+l.SealedBlockSize()])
	size := int64(len(raw))
	if _, err := rw.Journal.Begin(envelope.Change{File: id, At: at, Cut: -1, Min: size, Max: size, Hint: "f"}, body); err != nil {
		t.Fatalf("Begin: %v", err)
	}
	rw.Journal.Close() // the crash: the record stays, never ended
	flip(t, p, at+10)

	ro, err = tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	r, err := ro.Fsck(ctx(t), volume.FsckOptions{})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if r.Clean() || len(r.Journal) != 1 || len(r.Problems) != 1 || len(r.Problems[0].Blocks) != 1 || r.Problems[0].Blocks[0].Index != 1 {
		t.Fatalf("read-only fsck after the crash: %+v; want block 1 torn and one journal entry", r)
	}
	ro.Close()

	rep, err := tv.open(t, volume.Options{})
	if err != nil {
		t.Fatalf("Open read-write: %v", err)
	}
	r, err = rep.Fsck(ctx(t), volume.FsckOptions{Repair: true})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if !r.Clean() || r.Repaired != 1 || r.OK != 1 {
		t.Fatalf("fsck --repair: %+v; want the record applied and the file ok", r)
	}
}

// TestFsckPlantedSymlink is a symbolic link planted in the cipher dir,
// in place of a directory or of the journal directory, pointing at a
// directory outside it that holds a damaged kmsfs file and a journal slot
// holding a record: fsck counts the link as skipped and reads nothing
// behind it.
func TestFsckPlantedSymlink(t *testing.T) {
	for _, name := range []string{"sub", volume.JournalName} {
		t.Run("link="+name, func(t *testing.T) {
			_, v := cryptVolume(t)
			encryptTo(t, v, filepath.Join(v.Dir, "f"), randomBytes(t, 1000))
			outside := t.TempDir()
			bad := filepath.Join(outside, "damaged")
			encryptTo(t, v, bad, randomBytes(t, fsckSize(v)))
			flip(t, bad, v.Format.Layout().BlockOffset(1)+20)
			if err := os.WriteFile(filepath.Join(outside, "slot-0"), append(make([]byte, 8), 1), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(v.Dir, name)); err != nil {
				t.Fatal(err)
			}
			r, err := v.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if !r.Clean() || r.Files != 1 || r.OK != 1 || r.Skipped != 1 || r.Journal != nil {
				t.Fatalf("report %+v: want the one file ok and the link skipped unfollowed", r)
			}
		})
	}
}

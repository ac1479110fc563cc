package volume_test

import (
	"fmt"
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

// otherPath is where the damage cases keep a second cipher file of v:
// beside the cipher dir, so fsck does not see it.
func otherPath(v *volume.Volume) string { return filepath.Join(filepath.Dir(v.Dir), "other") }

// editCipher replaces the cipher file at p with what edit makes of its
// bytes, given those of the file at otherPath (same volume, same size,
// its own file ID).
func editCipher(t *testing.T, v *volume.Volume, p string, edit func(b, other []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(otherPath(v))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, edit(b, other), 0o600); err != nil {
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
		// The rest of envelope's tamper suite (tamper_test.go): blocks
		// deleted, duplicated, moved in from another file, the last one
		// repeated or zeroed, a header from another file, a zeroed slot.
		{"block-1-deleted", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, _ []byte) []byte {
				return slices.Delete(b, int(l.BlockOffset(1)), int(l.BlockOffset(2)))
			})
		}, want{state: volume.FsckDamaged, blocks: []int64{1, 2, 3}, truncated: true}},
		{"block-1-duplicated", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, _ []byte) []byte {
				return slices.Insert(b, int(l.BlockOffset(2)), slices.Clone(b[l.BlockOffset(1):l.BlockOffset(2)])...)
			})
		}, want{state: volume.FsckDamaged, blocks: []int64{2, 3, 4, 5}, truncated: true}},
		{"block-2-from-other-file", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, other []byte) []byte {
				copy(b[l.BlockOffset(2):l.BlockOffset(3)], other[l.BlockOffset(2):])
				return b
			})
		}, want{state: volume.FsckDamaged, blocks: []int64{2}}},
		{"last-block-from-other-file", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, other []byte) []byte {
				copy(b[l.BlockOffset(4):], other[l.BlockOffset(4):])
				return b
			})
		}, want{state: volume.FsckDamaged, blocks: []int64{4}, truncated: true}},
		{"header-of-other-file", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, other []byte) []byte {
				copy(b, other[:l.HeaderSize()])
				return b
			})
		}, want{state: volume.FsckDamaged, blocks: []int64{0, 1, 2, 3, 4}, truncated: true}},
		{"last-block-repeated", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, _ []byte) []byte { return append(b, b[l.BlockOffset(4):]...) })
		}, want{state: volume.FsckDamaged, blocks: []int64{4}, truncated: true}},
		{"last-block-zeroed", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, _ []byte) []byte { clear(b[l.BlockOffset(4):]); return b })
		}, want{state: volume.FsckDamaged, blocks: []int64{4}, truncated: true}},
		{"middle-block-zeroed", func(t *testing.T, v *volume.Volume, p string) {
			l := v.Format.Layout()
			editCipher(t, v, p, func(b, _ []byte) []byte { clear(b[l.BlockOffset(2):l.BlockOffset(3)]); return b })
		}, want{state: volume.FsckDamaged, blocks: []int64{2}}},
		{"header-slot-0-zeroed", func(t *testing.T, v *volume.Volume, p string) {
			ss := v.Format.Layout().SlotSize()
			editCipher(t, v, p, func(b, _ []byte) []byte { clear(b[:ss]); return b })
		}, want{state: volume.FsckDamaged, slots: []int{0}}},
		{"header-slot-1-from-other-file", func(t *testing.T, v *volume.Volume, p string) {
			ss := v.Format.Layout().SlotSize()
			editCipher(t, v, p, func(b, other []byte) []byte { copy(b[ss:2*ss], other[ss:]); return b })
		}, want{state: volume.FsckDamaged, slots: []int{1}}},
		{"header-slot-0-from-other-file", func(t *testing.T, v *volume.Volume, p string) {
			ss := v.Format.Layout().SlotSize()
			editCipher(t, v, p, func(b, other []byte) []byte { copy(b[:ss], other); return b })
			// Open takes the other file's slot (its sequence number is as
			// high), so every block fails to read; the slot named is the
			// copied one, under which the first block does not open.
		}, want{state: volume.FsckDamaged, slots: []int{0}, blocks: []int64{0, 1, 2, 3, 4}, truncated: true}},
		{"foreign-file", func(t *testing.T, v *volume.Volume, p string) {
			if err := os.WriteFile(p, []byte("not a kmsfs file, only some words long enough to be looked at"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want{state: volume.FsckForeign}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, v := cryptVolume(t)
			encryptTo(t, v, filepath.Join(v.Dir, "intact"), randomBytes(t, fsckSize(v)))
			encryptTo(t, v, otherPath(v), randomBytes(t, fsckSize(v)))
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

// TestFsckEveryCutAndFlip is envelope's tamper suite at fsck's level: the
// cipher file cut at every length, and each of its bytes flipped in turn
// (every one in the header and around the block boundaries, every 17th
// inside the blocks, so the test stays quick).
// fsck never calls the file ok, except cut to nothing or to its bare
// header (an empty file, as FORMAT.md says), and a flip inside one header
// slot names that slot.
func TestFsckEveryCutAndFlip(t *testing.T) {
	_, v := cryptVolume(t)
	l := v.Format.Layout()
	p := filepath.Join(v.Dir, "victim")
	encryptTo(t, v, p, randomBytes(t, l.BlockSize()+100))
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	probes := func(n int) []int {
		var out []int
		for i := range n {
			in := (int64(i) - l.HeaderSize()) % l.SealedBlockSize()
			if int64(i) < l.HeaderSize()+64 || in < 8 || in > l.SealedBlockSize()-8 || i%17 == 0 || i > n-8 {
				out = append(out, i)
			}
		}
		return out
	}
	check := func(t *testing.T, what string, b []byte) volume.FsckFile {
		t.Helper()
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := v.Fsck(ctx(t), volume.FsckOptions{})
		if err != nil {
			t.Fatalf("%s: Fsck: %v", what, err)
		}
		if r.Files != 1 {
			t.Fatalf("%s: %d files", what, r.Files)
		}
		if len(r.Problems) == 0 {
			return volume.FsckFile{State: volume.FsckOK}
		}
		return r.Problems[0]
	}
	t.Run("cut=every-length", func(t *testing.T) {
		for _, n := range probes(len(orig)) {
			got := check(t, fmt.Sprintf("len=%d", n), orig[:n])
			empty := n == 0 || int64(n) == l.HeaderSize()
			if empty != (got.State == volume.FsckOK || got.State == volume.FsckEmpty) {
				t.Fatalf("len=%d: %+v", n, got)
			}
		}
	})
	t.Run("flip=every-byte", func(t *testing.T) {
		ss := l.SlotSize()
		for _, pos := range probes(len(orig)) {
			b := slices.Clone(orig)
			b[pos] ^= 0x01
			got := check(t, fmt.Sprintf("pos=%d", pos), b)
			switch {
			case got.State != volume.FsckDamaged:
				t.Fatalf("pos=%d: %+v, want damaged", pos, got)
			case pos < 2*ss && !slices.Equal(got.BadSlots, []int{pos / ss}):
				t.Fatalf("pos=%d: %+v, want header slot %d named", pos, got, pos/ss)
			case int64(pos) >= l.HeaderSize() && len(got.Blocks) != 1:
				t.Fatalf("pos=%d: %+v, want one block named", pos, got)
			}
		}
	})
}

// TestFsckFragmentAfterLastBlock is a few bytes appended to a cipher file
// (or a block cut to less than its overhead): whatever the file's size,
// a multiple of the read size included, fsck reports it cut short.
func TestFsckFragmentAfterLastBlock(t *testing.T) {
	_, v := cryptVolume(t)
	bs := v.Format.Layout().BlockSize()
	for _, size := range []int{0, 1, bs, 1 << 20, 2<<20 + bs} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			p := filepath.Join(v.Dir, "victim")
			encryptTo(t, v, p, randomBytes(t, size))
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.Write([]byte{1, 2, 3, 4, 5})
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			r, err := v.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if r.Clean() || len(r.Problems) != 1 || r.Problems[0].State != volume.FsckDamaged || !r.Problems[0].Truncated {
				t.Fatalf("report %+v; want the file damaged, cut short", r)
			}
		})
	}
}

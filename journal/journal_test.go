package journal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/stanza"
)

// errCrash is what a killBacking panics with when the process "dies".
var errCrash = errors.New("process killed")

// killBacking simulates a SIGKILL of the process during a change to the
// cipher file: at mutation number at (counting WriteAt and Truncate calls)
// it does what the kernel does to a buffered write cut short by a fatal
// signal — keeps a prefix that ends on a page boundary — and panics.
type killBacking struct {
	*memfile.File
	at, n int
	cut   func(lo, hi int64) int64 // chooses the page boundary the write stops at
}

func (k *killBacking) WriteAt(p []byte, off int64) (int, error) {
	k.n++
	if k.n == k.at {
		c := k.cut(off, off+int64(len(p)))
		k.File.WriteAt(p[:c-off], off)
		panic(errCrash)
	}
	return k.File.WriteAt(p, off)
}

func (k *killBacking) Truncate(n int64) error {
	k.n++
	if k.n == k.at {
		panic(errCrash)
	}
	return k.File.Truncate(n)
}

// crashed runs op and reports whether it was killed.
func crashed(op func() error) (killed bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			if r != errCrash {
				panic(r)
			}
			killed = true
		}
	}()
	return false, op()
}

func fileBytes(t *testing.T, f *envelope.File) ([]byte, error) {
	t.Helper()
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return got, nil
}

// TestJournalCrashLeavesOldOrNew kills a write or truncate at a random
// page boundary of a random system call and checks that, after the journal
// is reopened and the file opened, the file holds exactly its contents
// before or after the operation. Without the journal the same cuts leave
// blocks that fail to authenticate: the test counts those too, to show
// the cuts hit.
func TestJournalCrashLeavesOldOrNew(t *testing.T) {
	for _, bs := range []int{4096, 65536} {
		t.Run(fmt.Sprintf("bs=%d", bs), func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			if *crashSeed != 0 {
				seed = *crashSeed
			}
			t.Logf("seed %d (rerun with -seed %d)", seed, seed)
			r := envelopetest.Seeded(seed)
			const rounds = 400
			var kills, tornWithout, sawOld, sawNew int
			for round := range rounds {
				dir := filepath.Join(t.TempDir(), "journal")
				j, err := openJournal(t, dir, 4)
				if err != nil {
					t.Fatal(err)
				}
				v := envelopetest.NewVolume(t, bs, func(o *envelope.Options) { o.Journal = j })
				dk := envelopetest.DataKey(byte(round))
				mem := &memfile.File{}
				kb := &killBacking{File: mem}
				f, err := v.Create(kb, dk, []stanza.Stanza{envelopetest.Stanza(dk)})
				if err != nil {
					t.Fatal(err)
				}
				// Some contents, written without a crash.
				model := envelopetest.Fill(int(r.Uint64()%uint64(4*bs)), r.Uint64())
				if _, err := f.WriteAt(model, 0); err != nil {
					t.Fatal(err)
				}
				if r.Uint64()%2 == 0 {
					// A gap of holes for the op to overwrite.
					grown := len(model) + bs + int(r.Uint64()%uint64(4*bs))
					if err := f.Truncate(int64(grown)); err != nil {
						t.Fatal(err)
					}
					model = append(model, make([]byte, grown-len(model))...)
				}
				before := bytes.Clone(model)
				after := bytes.Clone(model)
				var op func() error
				calls := 3 // system calls the kill may land in
				switch r.Uint64() % 3 {
				case 0, 1:
					off := int64(r.Uint64() % uint64(len(model)+2*bs))
					n := 1 + int(r.Uint64()%uint64(3*bs))
					if r.Uint64()%4 == 0 {
						// Large enough to be sealed while it is written,
						// in several writes.
						n, calls = 256<<10+int(r.Uint64()%(512<<10)), 8
					}
					p := envelopetest.Fill(n, r.Uint64())
					if end := off + int64(len(p)); end > int64(len(after)) {
						after = append(after, make([]byte, end-int64(len(after)))...)
					}
					copy(after[off:], p)
					op = func() error { _, err := f.WriteAt(p, off); return err }
				default:
					size := int64(r.Uint64() % uint64(len(model)+2*bs))
					if size < int64(len(after)) {
						after = after[:size]
					} else {
						after = append(after, make([]byte, size-int64(len(after)))...)
					}
					op = func() error { return f.Truncate(size) }
				}
				kb.n, kb.at = 0, 1+int(r.Uint64()%uint64(calls))
				kb.cut = func(lo, hi int64) int64 {
					first := (lo/4096 + 1) * 4096
					if first >= hi {
						return lo + int64(r.Uint64()%2)*(hi-lo) // within one page: all or nothing
					}
					return first + int64(r.Uint64()%uint64((hi-1-first)/4096+1))*4096
				}
				killed, err := crashed(op)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if !killed {
					continue
				}
				kills++
				// What a reader without the journal would see.
				plain := envelopetest.NewVolume(t, bs)
				if g, err := plain.Open(context.Background(), memfile.New(mem.Bytes()), &envelopetest.Keys{}); err != nil {
					tornWithout++
				} else if got, err := fileBytes(t, g); err != nil || (!bytes.Equal(got, before) && !bytes.Equal(got, after)) {
					tornWithout++
				}

				// The process is gone; a new one opens the journal.
				j.Close()
				j2, err := openJournal(t, dir, 4)
				if err != nil {
					t.Fatal(err)
				}
				if j2.Pending() > 1 {
					t.Fatalf("round %d: %d pending records after a kill, want at most 1 (a write within one page needs none)", round, j2.Pending())
				}
				v2 := envelopetest.NewVolume(t, bs, func(o *envelope.Options) { o.Journal = j2 })
				g, err := v2.Open(context.Background(), mem, &envelopetest.Keys{})
				if err != nil {
					t.Fatalf("round %d: open after kill: %v", round, err)
				}
				got, err := fileBytes(t, g)
				switch {
				case err != nil:
					t.Fatalf("round %d: read after kill: %v", round, err)
				case bytes.Equal(got, after):
					sawNew++
				case bytes.Equal(got, before):
					sawOld++
				default:
					t.Fatalf("round %d: after the kill the file is neither its old (%d bytes) nor its new (%d bytes) contents (%d bytes)", round, len(before), len(after), len(got))
				}
				if j2.Pending() != 0 {
					t.Fatalf("round %d: %d records still pending after open", round, j2.Pending())
				}
				// The file keeps working.
				if _, err := g.WriteAt([]byte("x"), 0); err != nil {
					t.Fatal(err)
				}
				j2.Close()
			}
			t.Logf("%d rounds, %d kills: %d old, %d new; without the journal %d would have been neither", rounds, kills, sawOld, sawNew, tornWithout)
			if kills < rounds/4 || tornWithout == 0 || sawOld == 0 || sawNew == 0 {
				t.Fatalf("the kills did not exercise the journal: %d kills, %d torn without it, %d old, %d new", kills, tornWithout, sawOld, sawNew)
			}
		})
	}
}

// TestJournalCleanRunLeavesNothing: writes and truncates that complete
// leave no record behind, and the slot files hold no large bodies.
func TestJournalCleanRunLeavesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "journal")
	j, err := openJournal(t, dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	v := envelopetest.NewVolume(t, 4096, func(o *envelope.Options) { o.Journal = j })
	f, b := envelopetest.NewFile(t, v, envelopetest.DataKey(1))
	want := envelopetest.Fill(3<<20, 7)
	if _, err := f.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(want[:1<<20], 100); err != nil { // overwrite
		t.Fatal(err)
	}
	copy(want[100:], want[:1<<20])
	if err := f.Truncate(12345); err != nil {
		t.Fatal(err)
	}
	want = want[:12345]
	if _, err := f.WriteAt([]byte("tail"), 20000); err != nil { // past the end, with a gap
		t.Fatal(err)
	}
	want = append(append(want, make([]byte, 20000-len(want))...), "tail"...)
	if _, err := openJournal(t, dir, 2); !errors.Is(err, journal.ErrBusy) {
		t.Fatalf("second Open of a journal in use: %v, want ErrBusy", err)
	}
	j.Close()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Size() > 64<<10 {
			t.Errorf("slot %s keeps %d bytes after use", e.Name(), fi.Size())
		}
	}
	j2, err := openJournal(t, dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if n := j2.Pending(); n != 0 {
		t.Fatalf("%d records pending after a clean run", n)
	}
	g := envelopetest.Reopen(t, envelopetest.NewVolume(t, 4096, func(o *envelope.Options) { o.Journal = j2 }), b)
	envelopetest.ReadAll(t, g, want)
}

// TestJournalTornInlineRecord builds, as docs/FORMAT.md specifies, a
// version 2 record (its checksum covers the body, written with it in one
// go) for an overwrite of a file's first block, and checks that a new
// Journal takes it as pending when whole, and ignores it when a kill cut
// its body at a page boundary: the change it announced had not begun.
func TestJournalTornInlineRecord(t *testing.T) {
	const bs = 4096
	for _, torn := range []bool{false, true} {
		t.Run(fmt.Sprintf("torn=%t", torn), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "journal")
			j, err := openJournal(t, dir, 1)
			if err != nil {
				t.Fatal(err)
			}
			v := envelopetest.NewVolume(t, bs, func(o *envelope.Options) { o.Journal = j })
			f, mem := envelopetest.NewFile(t, v, envelopetest.DataKey(7))
			want := envelopetest.Fill(3*bs, 7)
			if _, err := f.WriteAt(want, 0); err != nil {
				t.Fatal(err)
			}
			j.Close()

			l := v.Layout()
			raw := mem.Bytes()
			h, err := envelope.ParseHeaderSlot(l, raw[:l.HeaderSize()/2])
			if err != nil {
				t.Fatal(err)
			}
			// The redo body: the first block as it is stored.
			at := l.BlockOffset(0)
			body := bytes.Clone(raw[at : at+bs+envelope.BlockOverhead])
			rec := make([]byte, 80)
			copy(rec, "KMFJ")
			rec[4] = 2
			binary.BigEndian.PutUint64(rec[8:], 1)
			copy(rec[16:32], h.File[:])
			binary.BigEndian.PutUint64(rec[32:], uint64(at))
			binary.BigEndian.PutUint64(rec[40:], uint64(len(body)))
			binary.BigEndian.PutUint64(rec[48:], ^uint64(0)) // cut −1
			binary.BigEndian.PutUint64(rec[56:], uint64(len(raw)))
			binary.BigEndian.PutUint64(rec[64:], uint64(len(raw)))
			tab := crc32.MakeTable(crc32.Castagnoli)
			binary.BigEndian.PutUint32(rec[76:], crc32.Update(crc32.Checksum(rec[:76], tab), tab, body))
			slot := make([]byte, 4096+len(body))
			copy(slot, rec)
			copy(slot[4096:], body)
			if torn {
				// The kill stopped the write after the body's first page.
				clear(slot[8192:])
			}
			if err := os.WriteFile(filepath.Join(dir, "slot-0"), slot, 0o600); err != nil {
				t.Fatal(err)
			}

			j2, err := openJournal(t, dir, 1)
			if err != nil {
				t.Fatal(err)
			}
			defer j2.Close()
			if wantPending := map[bool]int{false: 1, true: 0}[torn]; j2.Pending() != wantPending {
				t.Fatalf("%d pending records, want %d", j2.Pending(), wantPending)
			}
			v2 := envelopetest.NewVolume(t, bs, func(o *envelope.Options) { o.Journal = j2 })
			g, err := v2.Open(context.Background(), mem, &envelopetest.Keys{})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := fileBytes(t, g); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after the record: %d bytes, %v", len(got), err)
			}
			if j2.Pending() != 0 {
				t.Fatalf("%d records pending after open", j2.Pending())
			}
		})
	}
}

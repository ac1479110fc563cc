package journal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/stanza"
)

// The tests in this file are attacks by whoever controls the cipher dir
// (an NFS server, a synced bucket) on a daemon that usually runs as root:
// entries planted in the journal directory, crafted records, FIFOs where
// the journal expects a file.

const journalName = "kmsfs.journal"

// hangLimit bounds an operation that a planted FIFO could block forever,
// so that a regression fails instead of hanging the test binary.
const hangLimit = 10 * time.Second

// within runs op on another goroutine and fails the test if it has not
// returned within hangLimit. A panic in op is returned as an error, so
// that an allocation of a crafted length fails the test, not the binary.
func within(t *testing.T, what string, op func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("%s panicked: %v", what, r)
			}
		}()
		done <- op()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(hangLimit):
		t.Fatalf("%s still blocked after %v", what, hangLimit)
		return nil
	}
}

// outsideFile is a host file outside the cipher dir that the attack
// aims at; unchanged reports whether it still holds what it held.
type outsideFile struct {
	path string
	want []byte
}

// closeJournal closes j when the test ends, unless it failed: an
// operation that a regression left blocked (on a FIFO) holds the
// journal's lock, and the close would block the test binary too.
func closeJournal(t *testing.T, j *journal.Journal) {
	t.Cleanup(func() {
		if !t.Failed() {
			j.Close()
		}
	})
}

func (o outsideFile) check(t *testing.T) {
	t.Helper()
	got, err := os.ReadFile(o.path)
	if err != nil || !bytes.Equal(got, o.want) {
		t.Fatalf("the file outside the cipher dir changed: %d bytes (want %d), %v", len(got), len(o.want), err)
	}
}

// plant puts an entry of the given kind at path: a symlink or hard link to
// target, a FIFO, or an empty directory.
func plant(t *testing.T, kind, path, target string) {
	t.Helper()
	var err error
	switch kind {
	case "symlink":
		err = os.Symlink(target, path)
	case "hardlink":
		err = os.Link(target, path)
	case "fifo":
		err = unix.Mkfifo(path, 0o600)
	case "dir":
		err = os.Mkdir(path, 0o700)
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// cipherFile is a cipher file of a journaled volume kept at name in the
// cipher dir cdir, as a mount keeps one.
type cipherFile struct {
	f    *envelope.File
	os   *os.File
	v    *envelope.Volume
	want []byte
}

type hintedFile struct {
	*os.File
	hint string
}

func (h hintedFile) JournalHint() string { return h.hint }

func newCipherFile(t *testing.T, j *journal.Journal, cdir, name string, size int) *cipherFile {
	t.Helper()
	v := envelopetest.NewVolume(t, 4096, func(o *envelope.Options) { o.Journal = j })
	of, err := os.OpenFile(filepath.Join(cdir, name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { of.Close() })
	dk := envelopetest.DataKey(5)
	f, err := v.Create(hintedFile{of, name}, dk, []stanza.Stanza{envelopetest.Stanza(dk)})
	if err != nil {
		t.Fatal(err)
	}
	c := &cipherFile{f: f, os: of, v: v, want: envelopetest.Fill(size, 9)}
	if _, err := f.WriteAt(c.want, 0); err != nil {
		t.Fatal(err)
	}
	return c
}

// write writes n bytes at off through the journal and updates want.
func (c *cipherFile) write(off int64, n int, seed uint64) error {
	p := envelopetest.Fill(n, seed)
	if _, err := c.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", n, off, err)
	}
	if end := int(off) + n; end > len(c.want) {
		c.want = append(c.want, make([]byte, end-len(c.want))...)
	}
	copy(c.want[off:], p)
	return nil
}

// check reads the file back through a new Volume (without a journal).
func (c *cipherFile) check(t *testing.T) {
	t.Helper()
	g, err := envelopetest.NewVolume(t, 4096).Open(context.Background(), c.os, &envelopetest.Keys{})
	if err != nil {
		t.Fatalf("open the cipher file: %v", err)
	}
	got, err := fileBytes(t, g)
	if err != nil || !bytes.Equal(got, c.want) {
		t.Fatalf("the cipher file reads %d bytes (want %d), %v", len(got), len(c.want), err)
	}
}

func (c *cipherFile) raw(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(c.os.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestJournalDirPlanted: an entry planted at kmsfs.journal that is not a
// directory of the cipher dir (a symlink to a directory outside it, where
// the daemon would create its slot files; a FIFO, whose open would hang)
// makes Open refuse, naming it, and nothing outside changes.
func TestJournalDirPlanted(t *testing.T) {
	for _, kind := range []string{"symlink", "fifo"} {
		t.Run("kind="+kind, func(t *testing.T) {
			cdir, outside := t.TempDir(), t.TempDir()
			victim := filepath.Join(outside, "slot-0")
			if err := os.WriteFile(victim, []byte("host data"), 0o600); err != nil {
				t.Fatal(err)
			}
			plant(t, kind, filepath.Join(cdir, journalName), outside)
			var j *journal.Journal
			err := within(t, "Open", func() (err error) {
				j, err = openJournal(t, filepath.Join(cdir, journalName), 2)
				return err
			})
			if err == nil {
				j.Close()
				t.Fatal("Open accepted a journal directory that is not a directory of the cipher dir")
			}
			if !errors.Is(err, journal.ErrEntry) || !bytes.Contains([]byte(err.Error()), []byte(journalName)) {
				t.Fatalf("Open: %v; want ErrEntry naming %s", err, journalName)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("the directory outside holds %d entries, want only its own file", len(ents))
			}
			outsideFile{victim, []byte("host data")}.check(t)
		})
	}
}

// TestJournalSlotPlanted: a symlink to a host file, a hard link to one, a
// FIFO or a directory planted as a slot file, before the journal is opened
// or while it is idle, is never written through: after journaled writes
// that go through every slot, the host file is unchanged and the cipher
// file reads back.
func TestJournalSlotPlanted(t *testing.T) {
	const slots = 3
	for _, kind := range []string{"symlink", "hardlink", "fifo", "dir"} {
		for _, when := range []string{"before-open", "after-open"} {
			for _, slot := range []int{0, slots - 1} {
				t.Run(fmt.Sprintf("kind=%s/when=%s/slot=%d", kind, when, slot), func(t *testing.T) {
					cdir := t.TempDir()
					jdir := filepath.Join(cdir, journalName)
					// A hard link needs the host file on the same file
					// system: beside the cipher dir.
					victim := outsideFile{path: filepath.Join(cdir, "host-file"), want: bytes.Repeat([]byte("precious "), 2000)}
					if err := os.WriteFile(victim.path, victim.want, 0o600); err != nil {
						t.Fatal(err)
					}
					slotPath := filepath.Join(jdir, fmt.Sprintf("slot-%d", slot))
					if when == "before-open" {
						if err := os.Mkdir(jdir, 0o700); err != nil {
							t.Fatal(err)
						}
						plant(t, kind, slotPath, victim.path)
					}
					j, err := openJournal(t, jdir, slots)
					if err != nil {
						t.Fatal(err)
					}
					closeJournal(t, j)
					if when == "before-open" {
						if d := j.Dropped(); len(d) != 1 || !errors.Is(d[0], journal.ErrEntry) {
							t.Fatalf("Dropped: %v; want the planted slot reported", d)
						}
					} else {
						plant(t, kind, slotPath, victim.path)
					}
					c := newCipherFile(t, j, cdir, "f", 5*4096)
					err = within(t, "journaled writes", func() error {
						for k := range 2 * slots {
							if err := c.write(int64(100+k*1000), 5000, uint64(k)); err != nil { // overwrites across blocks
								return err
							}
							if err := c.write(int64(len(c.want)), 3000, uint64(k)); err != nil { // appends
								return err
							}
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
					victim.check(t)
					c.check(t)
					fi, err := os.Lstat(slotPath)
					if err != nil || !fi.Mode().IsRegular() {
						t.Fatalf("%s after use: %v, %v; want the journal's own regular file", slotPath, fi, err)
					}
				})
			}
		}
	}
}

// record is a journal record as docs/FORMAT.md lays it out, crafted by an
// attacker: n is written as given, whatever body follows.
type record struct {
	version  byte
	seq      uint64
	file     envelope.FileID
	at, n    int64
	cut      int64
	min, max int64
	hint     string
	body     []byte
}

// bytes returns the slot file holding r: the record page, then the body.
func (r record) bytes() []byte {
	b := make([]byte, 4096+len(r.body))
	copy(b, "KMFJ")
	b[4] = r.version
	binary.BigEndian.PutUint64(b[8:], r.seq)
	copy(b[16:32], r.file[:])
	binary.BigEndian.PutUint64(b[32:], uint64(r.at))
	binary.BigEndian.PutUint64(b[40:], uint64(r.n))
	binary.BigEndian.PutUint64(b[48:], uint64(r.cut))
	binary.BigEndian.PutUint64(b[56:], uint64(r.min))
	binary.BigEndian.PutUint64(b[64:], uint64(r.max))
	binary.BigEndian.PutUint16(b[72:], uint16(len(r.hint)))
	copy(b[80:], r.hint)
	copy(b[4096:], r.body)
	tab := crc32.MakeTable(crc32.Castagnoli)
	sum := crc32.Update(crc32.Checksum(b[:76], tab), tab, []byte(r.hint))
	if r.version == 2 {
		sum = crc32.Update(sum, tab, r.body)
	}
	binary.BigEndian.PutUint32(b[76:], sum)
	return b
}

// journaledFile makes a cipher file at name in cdir through a journal
// of one slot, closed again, and returns the journal's directory.
func journaledFile(t *testing.T, cdir, name string) (string, *cipherFile) {
	t.Helper()
	jdir := filepath.Join(cdir, journalName)
	j, err := openJournal(t, jdir, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	return jdir, newCipherFile(t, j, cdir, name, 3*4096)
}

// overwriteRecord crafts a valid-looking redo record for c: write body
// over its first block, with the size check matching c's cipher file.
func overwriteRecord(t *testing.T, c *cipherFile, hint string, body []byte) record {
	t.Helper()
	raw := c.raw(t)
	l := c.v.Layout()
	h, err := envelope.ParseHeaderSlot(l, raw[:l.HeaderSize()/2])
	if err != nil {
		t.Fatal(err)
	}
	return record{version: 1, seq: 1, file: h.File, at: l.BlockOffset(0), n: int64(len(body)), cut: -1,
		min: int64(len(raw)), max: int64(len(raw)), hint: hint, body: body}
}

// TestJournalOversizeRecord: a crafted record whose body length n is more
// than its file holds (up to 2^63-1, which an allocation of n bytes would
// panic on) is dropped and reported at Open, never allocated nor
// applied; the cipher file it names stays as it was.
func TestJournalOversizeRecord(t *testing.T) {
	for _, n := range []int64{1 << 62, math.MaxInt64, 8192 + 1, -1} {
		for _, name := range []string{"slot-0", "pending-0123456789abcdef"} {
			t.Run(fmt.Sprintf("n=%d/file=%s", n, name), func(t *testing.T) {
				cdir := t.TempDir()
				jdir, c := journaledFile(t, cdir, "f")
				rec := overwriteRecord(t, c, "f", envelopetest.Fill(8192, 3))
				rec.n = n
				if err := os.WriteFile(filepath.Join(jdir, name), rec.bytes(), 0o600); err != nil {
					t.Fatal(err)
				}
				var j2 *journal.Journal
				if err := within(t, "Open", func() (err error) { j2, err = openJournal(t, jdir, 1); return err }); err != nil {
					t.Fatal(err)
				}
				closeJournal(t, j2)
				if j2.Pending() != 0 {
					t.Fatalf("%d records pending; want the crafted one dropped", j2.Pending())
				}
				if d := j2.Dropped(); n >= 0 && (len(d) != 1 || !errors.Is(d[0], journal.ErrEntry)) {
					t.Fatalf("Dropped: %v; want the crafted record reported", d)
				}
				if _, err := os.Lstat(filepath.Join(jdir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the crafted record is still there: %v", err)
				}
				root := openRoot(t, cdir)
				if err := within(t, "RecoverFiles", func() error { _, err := j2.RecoverFiles(root, c.v.Layout()); return err }); err != nil {
					t.Fatal(err)
				}
				c.check(t)
			})
		}
	}
}

// TestJournalPendingPlanted: a record file that is not the journal's own
// regular file (a symlink or hard link to a host file that holds a record
// and secret bytes, a FIFO) is not read and not applied, whether it is
// there when the journal is opened or swapped in for a valid record before
// that record is applied: no host byte reaches the cipher file, and the
// open does not hang.
func TestJournalPendingPlanted(t *testing.T) {
	for _, kind := range []string{"symlink", "hardlink", "fifo"} {
		for _, when := range []string{"before-open", "before-apply"} {
			t.Run(fmt.Sprintf("kind=%s/when=%s", kind, when), func(t *testing.T) {
				cdir := t.TempDir()
				jdir, c := journaledFile(t, cdir, "f")
				// A host file readable by the daemon only, holding a record
				// for c whose body is the secret: what the attacker wants
				// copied into c, which they can read.
				secret := bytes.Repeat([]byte("SECRET!!"), 9000) // over 64 KiB: read at apply
				rec := overwriteRecord(t, c, "f", secret)
				victim := outsideFile{path: filepath.Join(cdir, "host-secret"), want: rec.bytes()}
				if err := os.WriteFile(victim.path, victim.want, 0o600); err != nil {
					t.Fatal(err)
				}
				pending := filepath.Join(jdir, "pending-00000000000000aa")
				if when == "before-open" {
					plant(t, kind, pending, victim.path)
				} else {
					// A valid record of the journal's own, replaced once
					// Open has read it.
					if err := os.WriteFile(pending, rec.bytes(), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				var j2 *journal.Journal
				if err := within(t, "Open", func() (err error) { j2, err = openJournal(t, jdir, 1); return err }); err != nil {
					t.Fatal(err)
				}
				closeJournal(t, j2)
				if when == "before-apply" {
					if j2.Pending() != 1 {
						t.Fatalf("%d records pending, want the valid one", j2.Pending())
					}
					if err := os.Remove(pending); err != nil {
						t.Fatal(err)
					}
					plant(t, kind, pending, victim.path)
				}
				root := openRoot(t, cdir)
				err := within(t, "RecoverFiles", func() error { _, err := j2.RecoverFiles(root, c.v.Layout()); return err })
				t.Logf("RecoverFiles: %v", err)
				if j2.Pending() != 0 {
					t.Fatalf("%d records pending after RecoverFiles", j2.Pending())
				}
				if bytes.Contains(c.raw(t), secret[:64]) {
					t.Fatal("the host file's bytes were copied into the cipher file")
				}
				if d := j2.Dropped(); len(d) != 1 || !errors.Is(d[0], journal.ErrEntry) {
					t.Fatalf("Dropped: %v; want the planted record reported", d)
				}
				c.check(t)
				victim.check(t)
			})
		}
	}
}

// TestJournalHintPlanted: where a pending record's path hint names its
// cipher file, a FIFO or a symlink (to a FIFO, or to a host file) is
// left alone by RecoverFiles: no hang, nothing read or written, the record
// stays pending and the error names the entry.
func TestJournalHintPlanted(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink-to-fifo", "symlink-to-file", "symlinked-dir"} {
		t.Run("kind="+kind, func(t *testing.T) {
			cdir := t.TempDir()
			if err := os.Mkdir(filepath.Join(cdir, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			jdir, c := journaledFile(t, cdir, "sub/f")
			rec := overwriteRecord(t, c, "sub/f", envelopetest.Fill(8192, 4))
			if err := os.WriteFile(filepath.Join(jdir, "slot-0"), rec.bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			// The cipher file moves away; something else takes its path.
			outside := t.TempDir()
			moved := filepath.Join(outside, "f")
			if err := os.Rename(filepath.Join(cdir, "sub/f"), moved); err != nil {
				t.Fatal(err)
			}
			before, err := os.ReadFile(moved)
			if err != nil {
				t.Fatal(err)
			}
			victim := outsideFile{path: moved, want: before}
			switch kind {
			case "fifo":
				plant(t, "fifo", filepath.Join(cdir, "sub/f"), "")
			case "symlink-to-fifo":
				plant(t, "fifo", filepath.Join(outside, "fifo"), "")
				plant(t, "symlink", filepath.Join(cdir, "sub/f"), filepath.Join(outside, "fifo"))
			case "symlink-to-file":
				plant(t, "symlink", filepath.Join(cdir, "sub/f"), moved)
			case "symlinked-dir":
				if err := os.Remove(filepath.Join(cdir, "sub")); err != nil {
					t.Fatal(err)
				}
				plant(t, "symlink", filepath.Join(cdir, "sub"), outside)
			}
			j2, err := openJournal(t, jdir, 1)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j2)
			var n int
			root := openRoot(t, cdir)
			err = within(t, "RecoverFiles", func() (err error) { n, err = j2.RecoverFiles(root, c.v.Layout()); return err })
			if n != 0 || j2.Pending() != 1 {
				t.Fatalf("RecoverFiles applied %d records, %d pending; want none applied, the record kept", n, j2.Pending())
			}
			if !errors.Is(err, journal.ErrEntry) {
				t.Fatalf("RecoverFiles: %v; want ErrEntry naming the planted entry", err)
			}
			victim.check(t)
		})
	}
}

// TestJournalNoBodyLeft: once a journaled change completes, no file of the
// journal directory holds any of the sealed bytes it replaced or wrote (an
// old last block kept there would be enough to roll the file back).
func TestJournalNoBodyLeft(t *testing.T) {
	const bs = 4096
	for _, c := range []struct {
		op      string
		off     int64
		n       int
		trimmed int64 // for op=truncate: the new size
	}{
		{op: "overwrite", off: 100, n: 5000},
		{op: "overwrite", off: 100, n: 200 << 10}, // a body written before its record
		{op: "overwrite", off: 100, n: 600 << 10}, // a body large enough that its slot is emptied
		{op: "append", off: 5*bs + 10, n: 3000},
		{op: "truncate", trimmed: 2*bs + 100},
	} {
		t.Run(fmt.Sprintf("op=%s/off=%d/n=%d", c.op, c.off, c.n), func(t *testing.T) {
			cdir := t.TempDir()
			jdir := filepath.Join(cdir, journalName)
			j, err := openJournal(t, jdir, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			cf := newCipherFile(t, j, cdir, "f", 5*bs+10)
			before := cf.raw(t)
			if c.op == "truncate" {
				if err := cf.f.Truncate(c.trimmed); err != nil {
					t.Fatal(err)
				}
				cf.want = cf.want[:c.trimmed]
			} else {
				if err := cf.write(c.off, c.n, 11); err != nil {
					t.Fatal(err)
				}
			}
			after := cf.raw(t)
			// The bytes the change replaced and wrote.
			lo := 0
			for lo < min(len(before), len(after)) && before[lo] == after[lo] {
				lo++
			}
			var changed [][]byte
			for _, b := range [][]byte{before, after} {
				for k := lo; k+32 <= len(b); k += 32 {
					changed = append(changed, b[k:k+32])
				}
			}
			if len(changed) == 0 {
				t.Fatal("the change changed nothing")
			}
			ents, err := os.ReadDir(jdir)
			if err != nil || len(ents) == 0 {
				t.Fatalf("journal directory: %d entries, %v; want the slot the change used", len(ents), err)
			}
			for _, e := range ents {
				got, err := os.ReadFile(filepath.Join(jdir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if k := slices.IndexFunc(changed, func(w []byte) bool { return bytes.Contains(got, w) }); k >= 0 {
					t.Fatalf("%s still holds sealed bytes of the finished change (%d bytes of it)", e.Name(), len(got))
				}
			}
			cf.check(t)
		})
	}
}

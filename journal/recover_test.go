package journal_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/stanza"
)

// hinted is an os.File backing that names itself for the journal, as the
// fs layer's does, and is killed at its second write.
type hinted struct {
	*os.File
	name   string
	writes int
}

func (h *hinted) JournalHint() string { return h.name }

func (h *hinted) WriteAt(p []byte, off int64) (int, error) {
	h.writes++
	if h.writes == 2 {
		// Killed after the first page of the write.
		cut := (off/4096 + 1) * 4096
		h.File.WriteAt(p[:cut-off], off)
		panic(errCrash)
	}
	return h.File.WriteAt(p, off)
}

// TestJournalRecoverFiles: a mount finds the file a record names and
// undoes the interrupted change before anything looks at the file.
func TestJournalRecoverFiles(t *testing.T) {
	dir := t.TempDir()
	jdir := filepath.Join(dir, "kmsfs.journal")
	j, err := openJournal(t, jdir, 2)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := envelope.NewLayout(4096, envelope.DefaultSlotSize)
	v := envelopetest.NewVolume(t, 4096, func(o *envelope.Options) { o.Journal = j })
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	of, err := os.OpenFile(filepath.Join(dir, "sub", "f"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	b := &hinted{File: of, name: "sub/f"}
	dk := envelopetest.DataKey(3)
	f, err := v.Create(b, dk, []stanza.Stanza{envelopetest.Stanza(dk)}) // write 1: the header
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := of.Stat()
	before := fi.Size()
	if killed, _ := crashed(func() error { _, err := f.WriteAt(envelopetest.Fill(3*4096, 1), 0); return err }); !killed {
		t.Fatal("not killed")
	}
	fi, _ = of.Stat()
	if fi.Size() == before {
		t.Fatal("the killed write changed nothing; the test needs a torn one")
	}
	j.Close()
	j2, err := openJournal(t, jdir, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	n, err := j2.RecoverFiles(openRoot(t, dir), l)
	if err != nil || n != 1 {
		t.Fatalf("RecoverFiles: %d, %v; want 1 record applied", n, err)
	}
	fi, _ = of.Stat()
	if fi.Size() != before {
		t.Fatalf("after recovery the cipher file has %d bytes, want %d (as before the killed write)", fi.Size(), before)
	}
	if j2.Pending() != 0 {
		t.Fatalf("%d records pending after RecoverFiles", j2.Pending())
	}
}

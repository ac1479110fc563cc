package journal_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/stanza"
)

// BenchmarkJournalWrite measures journaled writes to a cipher file on the
// local file system, where the slot's clearing (a truncate or a pwrite)
// costs what it costs on a mount: overwrites of one unaligned block (an
// inline record), of 128 KiB (a body written before its record) and of
// 1 MiB, and appends of one block (an undo record of the old last block).
func BenchmarkJournalWrite(b *testing.B) {
	const bs = 4096
	for _, c := range []struct {
		op     string
		n      int
		append bool
	}{{"overwrite", 4 << 10, false}, {"overwrite", 128 << 10, false}, {"overwrite", 1 << 20, false}, {"append", 4 << 10, true}} {
		b.Run(fmt.Sprintf("op=%s/size=%d", c.op, c.n), func(b *testing.B) {
			dir := b.TempDir()
			j := openBenchJournal(b, dir)
			defer j.Close()
			v := envelopetest.NewVolume(b, bs, func(o *envelope.Options) { o.Journal = j })
			of, err := os.OpenFile(filepath.Join(dir, "f"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer of.Close()
			dk := envelopetest.DataKey(1)
			f, err := v.Create(of, dk, []stanza.Stanza{envelopetest.Stanza(dk)})
			if err != nil {
				b.Fatal(err)
			}
			const base = 4 << 20
			if _, err := f.WriteAt(envelopetest.Fill(base, 1), 0); err != nil {
				b.Fatal(err)
			}
			p := envelopetest.Fill(c.n, 2)
			b.SetBytes(int64(c.n))
			b.ReportAllocs()
			off := int64(100) // unaligned: the write spans pages and blocks
			for b.Loop() {
				if c.append {
					off = f.Size()
					if off > 64<<20 {
						b.StopTimer()
						if err := f.Truncate(base); err != nil {
							b.Fatal(err)
						}
						off = base
						b.StartTimer()
					}
				}
				if _, err := f.WriteAt(p, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

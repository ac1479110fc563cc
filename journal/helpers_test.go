package journal_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/journal"
)

// crashSeed replays one run of TestJournalCrashLeavesOldOrNew.
var crashSeed = flag.Uint64("seed", 0, "seed for TestJournalCrashLeavesOldOrNew (0: from the clock)")

// openJournal opens the journal directory at path dir, as the mount does:
// through an os.Root of the directory that holds it.
func openJournal(t testing.TB, dir string, slots int) (*journal.Journal, error) {
	t.Helper()
	root, err := os.OpenRoot(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	return journal.Open(root, filepath.Base(dir), slots)
}

// openRoot opens dir as an os.Root, closed when the test ends.
func openRoot(t testing.TB, dir string) *os.Root {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return root
}

func openBenchJournal(b *testing.B, dir string) *journal.Journal {
	j, err := openJournal(b, filepath.Join(dir, "kmsfs.journal"), 0)
	if err != nil {
		b.Fatal(err)
	}
	return j
}

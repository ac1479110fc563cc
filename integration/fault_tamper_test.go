package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// ftNamesInit returns the `kmsfs init` flags of a volume whose names are
// stored encrypted (the default) or, as on volumes made before that was
// the default, in clear.
func ftNamesInit(encrypted bool) []string {
	if encrypted {
		return nil
	}
	return []string{"--plaintext-names"}
}

// ftLayout is a volume's cipher file geometry, read from its kmsfs.conf.
type ftLayout struct {
	BS int64 // plaintext block size
	H  int64 // header size: two slots
}

// ftReadLayout reads the block and header slot size from cipher's kmsfs.conf.
func ftReadLayout(t testing.TB, cipher string) ftLayout {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		BlockSize int64 `json:"block_size"`
		SlotSize  int64 `json:"header_slot_size"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("kmsfs.conf: %v", err)
	}
	return ftLayout{BS: c.BlockSize, H: 2 * c.SlotSize}
}

// Off returns the cipher file offset of block i.
func (l ftLayout) Off(i int64) int64 { return l.H + i*(l.BS+32) }

// ftTamperCase is one way of damaging a cipher file behind the mount's
// back, and what reading it must then do.
type ftTamperCase struct {
	name   string
	file   string   // the file checked
	donors []string // other files the case uses (damaged too if swapped)
	tamper func(t testing.TB, l ftLayout, path func(string) string)
	size   int64   // plaintext size afterwards
	bad    []int64 // blocks whose reads fail with EIO; nil with allBad
	allBad bool    // every block fails (a header from another file)
	open   bool    // the open itself fails with EIO
}

// The tampered files hold ftTamperSize bytes: blocks 0-4 full, block 5
// (the last) 1000 bytes.
const ftTamperSize = 5*4096 + 1000

func ftTamperCases() []ftTamperCase {
	const full = 5 * 4096
	return []ftTamperCase{
		{name: "flip=ciphertext,block=2", file: "flip-ct", size: ftTamperSize, bad: []int64{2},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) { ftFlip(t, p("flip-ct"), l.Off(2)+16+100) }},
		{name: "flip=nonce,block=0", file: "flip-nonce", size: ftTamperSize, bad: []int64{0},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) { ftFlip(t, p("flip-nonce"), l.Off(0)+3) }},
		{name: "flip=tag,block=5", file: "flip-tag", size: ftTamperSize, bad: []int64{5},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftFlip(t, p("flip-tag"), l.Off(5)+1000+32-1)
			}},
		{name: "swap=blocks-1-and-3", file: "swap", size: ftTamperSize, bad: []int64{1, 3},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				b1 := ftReadAt(t, p("swap"), l.Off(1), l.BS+32)
				b3 := ftReadAt(t, p("swap"), l.Off(3), l.BS+32)
				ftWriteAt(t, p("swap"), l.Off(1), b3)
				ftWriteAt(t, p("swap"), l.Off(3), b1)
			}},
		{name: "copy=block-4-from-other-file", file: "copied", donors: []string{"copied-donor"}, size: ftTamperSize, bad: []int64{4},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftWriteAt(t, p("copied"), l.Off(4), ftReadAt(t, p("copied-donor"), l.Off(4), l.BS+32))
			}},
		{name: "duplicate=block-0-onto-2", file: "dup", size: ftTamperSize, bad: []int64{2},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftWriteAt(t, p("dup"), l.Off(2), ftReadAt(t, p("dup"), l.Off(0), l.BS+32))
			}},
		{name: "zero=block-2", file: "zero-one", size: ftTamperSize, bad: []int64{2},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftWriteAt(t, p("zero-one"), l.Off(2), make([]byte, l.BS+32))
			}},
		{name: "zero=blocks-1-to-3", file: "zero-run", size: ftTamperSize, bad: []int64{1, 2, 3},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftWriteAt(t, p("zero-run"), l.Off(1), make([]byte, 3*(l.BS+32)))
			}},
		{name: "truncate=last-block-dropped", file: "cut-block", size: full, bad: []int64{4},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) { ftTruncate(t, p("cut-block"), l.Off(5)) }},
		{name: "truncate=inside-last-block", file: "cut-inside", size: ftTamperSize - 10, bad: []int64{5},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftTruncate(t, p("cut-inside"), l.Off(5)+1000+32-10)
			}},
		{name: "truncate=inside-block-2", file: "cut-middle", size: 2*4096 + 1000, bad: []int64{2},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftTruncate(t, p("cut-middle"), l.Off(2)+1000+32)
			}},
		{name: "truncate=fragment-after-block-4", file: "cut-fragment", size: full, bad: []int64{4},
			tamper: func(t testing.TB, l ftLayout, p func(string) string) { ftTruncate(t, p("cut-fragment"), l.Off(5)+20) }},
		{name: "header=swapped-between-files", file: "hdr-swap", donors: []string{"hdr-swap-donor"}, size: ftTamperSize, allBad: true,
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				a := ftReadAt(t, p("hdr-swap"), 0, l.H)
				b := ftReadAt(t, p("hdr-swap-donor"), 0, l.H)
				ftWriteAt(t, p("hdr-swap"), 0, b)
				ftWriteAt(t, p("hdr-swap-donor"), 0, a)
			}},
		{name: "header=slot-0-from-other-file", file: "hdr-slot", donors: []string{"hdr-slot-donor"}, size: ftTamperSize, allBad: true,
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftWriteAt(t, p("hdr-slot"), 0, ftReadAt(t, p("hdr-slot-donor"), 0, l.H/2))
			}},
		{name: "header=slot-0-flipped", file: "hdr-flip0", size: ftTamperSize, // slot 1 takes over
			tamper: func(t testing.TB, l ftLayout, p func(string) string) { ftFlip(t, p("hdr-flip0"), 40) }},
		{name: "header=both-slots-flipped", file: "hdr-flip01", size: ftTamperSize, open: true,
			tamper: func(t testing.TB, l ftLayout, p func(string) string) {
				ftFlip(t, p("hdr-flip01"), 40)
				ftFlip(t, p("hdr-flip01"), l.H/2+40)
			}},
	}
}

// TestTamper damages cipher files behind a live mount (flipped bytes,
// swapped, copied and duplicated blocks, cut files, swapped and damaged
// headers) and checks through the mount, then again after a remount: reads
// of each damaged block fail with EIO, each such read logs exactly one
// line naming the file and block (path=… block=…), every other block and
// every other file reads its original bytes, and nothing else is logged.
// It runs with names encrypted and in clear: with encrypted names the
// attacker edits the backing entry of an existing name.
func TestTamper(t *testing.T) {
	for _, m := range sxNameModes {
		t.Run("names="+m.name, func(t *testing.T) { ftTamper(t, m.encrypted) })
	}
}

func ftTamper(t *testing.T, encNames bool) {
	v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: ftNamesInit(encNames)})
	v.MountForeground(t)
	l := ftReadLayout(t, v.Cipher)
	if l.BS != 4096 {
		t.Fatalf("block size %d; the cases assume 4096", l.BS)
	}
	cases := ftTamperCases()
	plain := map[string][]byte{"witness": ftBytes(ftRand(1), 3*4096+17)}
	for i, c := range cases {
		for j, name := range append([]string{c.file}, c.donors...) {
			plain[name] = ftBytes(ftRand(uint64(100*i+j+2)), ftTamperSize)
		}
	}
	for name, data := range plain {
		if err := os.WriteFile(v.Path(name), data, 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	back := map[string]string{}
	for name := range plain {
		back[name] = v.BackingPath(t, name)
	}
	cpath := func(name string) string {
		p, ok := back[name]
		if !ok {
			t.Fatalf("no backing entry recorded for %s", name)
		}
		return p
	}
	for _, c := range cases {
		t.Run("mounted/"+c.name, func(t *testing.T) {
			for _, name := range append([]string{c.file}, c.donors...) {
				v.WaitReleased(t, name) // so the daemon rereads the header
			}
			c.tamper(t, l, cpath)
			ftTamperCheck(t, v, c, plain)
		})
	}
	t.Run("mounted/open-handle/flip=ciphertext,block=1", func(t *testing.T) { ftTamperOpen(t, v, l) })
	t.Run("mounted/open-handle/truncate=blocks-2-on", func(t *testing.T) { ftTamperCutOpen(t, v, l) })
	v.Remount(t)
	for _, c := range cases {
		t.Run("remounted/"+c.name, func(t *testing.T) { ftTamperCheck(t, v, c, plain) })
	}
}

// ftTamperOpen damages a block of a file the test holds open: the
// daemon keeps the file's header and keys, but reads every block afresh,
// so the read through the same descriptor fails.
func ftTamperOpen(t *testing.T, v *fusetest.CLIVolume, l ftLayout) {
	data := ftBytes(ftRand(7), 3*4096)
	if err := os.WriteFile(v.Path("open-flip"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(v.Path("open-flip"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, data[4096:8192]) {
		t.Fatalf("block 1 before the damage: err %v or other bytes", err)
	}
	ftFlip(t, v.BackingPath(t, "open-flip"), l.Off(1)+16+7)
	mark := v.LogMark()
	if _, err := f.ReadAt(buf, 4096); mntErrno(err) != syscall.EIO {
		t.Errorf("block 1 after the damage, same descriptor: got %v, want EIO", err)
	}
	lines := v.LogSince(mark)
	if n := ftCountLines(lines, "open-flip", "read", "1"); n != 1 || len(lines) != 1 {
		t.Errorf("want one log line naming path=open-flip block=1, got:\n%s", ftRawLines(lines))
	}
	for _, i := range []int64{0, 2} {
		if _, err := f.ReadAt(buf, i*4096); err != nil || !bytes.Equal(buf, data[i*4096:(i+1)*4096]) {
			t.Errorf("intact block %d: err %v or other bytes", i, err)
		}
	}
}

// ftTamperCutOpen cuts the cipher file of a file the test holds open: the
// daemon still takes the file for its old size, and the blocks that are
// gone fail with EIO (they are never read as zeros), a write into one
// fails rather than sealing zeros as data, and the blocks before read.
func ftTamperCutOpen(t *testing.T, v *fusetest.CLIVolume, l ftLayout) {
	data := ftBytes(ftRand(8), 4*4096)
	if err := os.WriteFile(v.Path("open-cut"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(v.Path("open-cut"), os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:4096]) {
		t.Fatalf("block 0 before the cut: err %v or other bytes", err)
	}
	ftTruncate(t, v.BackingPath(t, "open-cut"), l.Off(2))
	mark := v.LogMark()
	for _, i := range []int64{2, 3} {
		if _, err := f.ReadAt(buf, i*4096); mntErrno(err) != syscall.EIO {
			t.Errorf("block %d after the cut, same descriptor: got %v, want EIO", i, err)
		}
	}
	if n := ftCountLines(v.LogSince(mark), "open-cut", "read", "2"); n < 1 {
		t.Errorf("want a log line naming path=open-cut block=2, got:\n%s", ftRawLines(v.LogSince(mark)))
	}
	if _, err := f.WriteAt([]byte("x"), 3*4096+5); mntErrno(err) != syscall.EIO {
		t.Errorf("partial write into a cut block: got %v, want EIO", err)
	}
	for _, i := range []int64{0, 1} {
		if _, err := f.ReadAt(buf, i*4096); err != nil || !bytes.Equal(buf, data[i*4096:(i+1)*4096]) {
			t.Errorf("intact block %d: err %v or other bytes", i, err)
		}
	}
}

// ftTamperCheck reads c's file and the witness through the mount, block by
// block, and checks the results and the log lines they caused.
func ftTamperCheck(t *testing.T, v *fusetest.CLIVolume, c ftTamperCase, plain map[string][]byte) {
	t.Helper()
	const bs = 4096
	p := v.Path(c.file)
	// The kernel caches attributes for a second: wait until it shows the
	// size the cipher file now implies.
	fusetest.Eventually(t, "size of "+c.file, 5*time.Second, func() bool {
		fi, err := os.Stat(p)
		return err == nil && fi.Size() == c.size
	})
	mark := v.LogMark()
	blocks, err := ftReadBlocks(p, bs)
	lines := v.LogSince(mark)
	if c.open {
		if mntErrno(err) != syscall.EIO {
			t.Fatalf("open %s: got %v, want EIO", c.file, err)
		}
		if n := ftCountLines(lines, c.file, "open", ""); n != 1 {
			t.Errorf("open %s: %d log lines name op=open path=%s, want 1; log:\n%s", c.file, n, c.file, ftRawLines(lines))
		}
		ftCheckWitness(t, v, plain)
		return
	}
	if err != nil {
		t.Fatalf("open %s: %v", c.file, err)
	}
	bad := map[int64]bool{}
	for _, i := range c.bad {
		bad[i] = true
	}
	want := plain[c.file]
	nblocks := (c.size + bs - 1) / bs
	for i := range nblocks {
		lo, hi := i*bs, min((i+1)*bs, c.size)
		berr, failed := blocks.Bad[i]
		switch {
		case bad[i] || c.allBad:
			if mntErrno(berr) != syscall.EIO {
				t.Errorf("%s block %d: read got %v, want EIO", c.file, i, berr)
			}
			if n := ftCountLines(lines, c.file, "read", strconv.FormatInt(i, 10)); n != 1 {
				t.Errorf("%s block %d: %d log lines name path=%s block=%d, want 1", c.file, i, n, c.file, i)
			}
		case failed:
			t.Errorf("%s block %d is intact but its read failed: %v", c.file, i, berr)
		case !bytes.Equal(blocks.Data[lo:hi], want[lo:hi]):
			t.Errorf("%s block %d: read returned other bytes than were written", c.file, i)
		}
	}
	var errLines int
	for _, l := range lines {
		if l.F["level"] == "error" {
			errLines++
		}
	}
	wantLines := len(c.bad)
	if c.allBad {
		wantLines = int(nblocks)
	}
	if errLines != wantLines {
		t.Errorf("%d error lines logged, want %d (one per failed read):\n%s", errLines, wantLines, ftRawLines(lines))
	}
	ftCheckWitness(t, v, plain)
}

// ftCheckWitness checks that the untouched file still reads back whole.
func ftCheckWitness(t *testing.T, v *fusetest.CLIVolume, plain map[string][]byte) {
	t.Helper()
	got, err := os.ReadFile(v.Path("witness"))
	if err != nil || !bytes.Equal(got, plain["witness"]) {
		t.Errorf("the untouched file no longer reads back (err %v)", err)
	}
}

// ftCountLines counts error lines naming path and op and, if block is not
// "", that block.
func ftCountLines(lines []fusetest.LogLine, path, op, block string) int {
	n := 0
	for _, l := range lines {
		if l.F["level"] == "error" && l.F["path"] == path && l.F["op"] == op && (block == "" || l.F["block"] == block) {
			n++
		}
	}
	return n
}

func ftRawLines(lines []fusetest.LogLine) string {
	var b bytes.Buffer
	for _, l := range lines {
		fmt.Fprintln(&b, l.Raw)
	}
	return b.String()
}

func ftFlip(t testing.TB, p string, off int64) {
	t.Helper()
	b := ftReadAt(t, p, off, 1)
	b[0] ^= 0x5a
	ftWriteAt(t, p, off, b)
}

func ftReadAt(t testing.TB, p string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", p, off, err)
	}
	return b
}

func ftWriteAt(t testing.TB, p string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %s at %d: %v", p, off, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func ftTruncate(t testing.TB, p string, size int64) {
	t.Helper()
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
}

package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/volume"
)

// lnLongDir is a directory name too long for a short backing name: its
// cipher dir entry is a kmsfs.L… name with a side file.
var lnLongDir = strings.Repeat("quarterly-", 20) + "reports"

// lnWrite writes files of random content at the plain paths names through
// the mount of v and returns the cipher path (below v.Cipher) of each.
func lnWrite(t *testing.T, v *fusetest.CLIVolume, names ...string) map[string]string {
	t.Helper()
	rels := map[string]string{}
	for _, name := range names {
		if err := os.MkdirAll(filepath.Dir(v.Path(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(v.Path(name), cryPlain(t, crySize), 0o644); err != nil {
			t.Fatal(err)
		}
		cp, err := v.MountedCipherPath(name)
		if err != nil {
			t.Fatal(err)
		}
		if rels[name], err = filepath.Rel(v.Cipher, cp); err != nil {
			t.Fatal(err)
		}
	}
	return rels
}

// lnEdit opens the cipher file rel of v for edit to change what an
// attacker (or a bad disk) would at rest, given its layout.
func lnEdit(t *testing.T, v *fusetest.CLIVolume, rel string, edit func(f *os.File, l envelope.Layout)) {
	t.Helper()
	f, err := os.OpenFile(v.CipherPath(rel), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	prefix := make([]byte, envelope.LayoutPrefixSize)
	if _, err := f.ReadAt(prefix, 0); err != nil {
		t.Fatal(err)
	}
	l, err := lcLayout(prefix)
	if err != nil {
		t.Fatal(err)
	}
	edit(f, l)
}

// lnFlip inverts the byte at off of f.
func lnFlip(t *testing.T, f *os.File, off int64) {
	t.Helper()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{^b[0]}, off); err != nil {
		t.Fatal(err)
	}
}

// lnDamageBlock changes a byte of block 3 of the cipher file rel of v and
// returns the block's plaintext offset.
func lnDamageBlock(t *testing.T, v *fusetest.CLIVolume, rel string) int64 {
	t.Helper()
	var plainOff int64
	lnEdit(t, v, rel, func(f *os.File, l envelope.Layout) {
		lnFlip(t, f, l.BlockOffset(3)+40)
		plainOff = 3 * int64(l.BlockSize())
	})
	return plainOff
}

// lnProblem returns the report's problem of the cipher path rel.
func lnProblem(t *testing.T, r *volume.FsckReport, rel string) volume.FsckFile {
	t.Helper()
	for _, p := range r.Problems {
		if p.Path == rel {
			return p
		}
	}
	t.Fatalf("fsck does not list %s: %+v", rel, r.Problems)
	return volume.FsckFile{}
}

// TestFsckNamesPlainPath is the attacker (or the bad disk) who changes a
// block of a file under a long directory name of a volume with encrypted
// names: kmsfs fsck names the file by its cipher path and by the plain
// path a mount shows, in both output forms, and the side file that holds
// the long name is not taken for a foreign file.
func TestFsckNamesPlainPath(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	plain := "reports/" + lnLongDir + "/q3.pdf"
	rels := lnWrite(t, v, plain, "reports/ok.txt")
	v.Unmount(t)
	if out, code := lcFsck(t, v); code != 0 {
		t.Fatalf("fsck of an intact volume with a long name: exit %d\n%s", code, out)
	}
	rel := rels[plain]
	if strings.Contains(rel, "reports") || strings.Contains(rel, "q3") {
		t.Fatalf("cipher path %s holds a plain name", rel)
	}
	off := lnDamageBlock(t, v, rel)

	out, code := lcFsck(t, v, "--json")
	r := lcFsckReport(t, out, code)
	if code != lcExitDamage || len(r.Problems) != 1 {
		t.Fatalf("fsck --json: exit %d, %+v; want exit %d and one problem", code, r, lcExitDamage)
	}
	p := lnProblem(t, r, rel)
	if p.State != volume.FsckDamaged || p.PlainPath != plain || p.NameError != "" || len(p.Blocks) != 1 || p.Blocks[0].Offset != off {
		t.Fatalf("problem %+v; want %s damaged at offset %d, plain path %s", p, rel, off, plain)
	}
	if !strings.Contains(out, `"plain_path": "`+plain+`"`) {
		t.Fatalf("fsck --json does not give plain_path %s:\n%s", plain, out)
	}

	out, code = lcFsck(t, v)
	for _, want := range []string{rel + ": damaged", "plain path: " + plain, fmt.Sprintf("(plaintext offset %d)", off)} {
		if code != lcExitDamage || !strings.Contains(out, want) {
			t.Fatalf("fsck: exit %d, output:\n%s\nwant exit %d and %q", code, out, lcExitDamage, want)
		}
	}
}

// TestFsckNamesMovedName is the attacker who moves the backing entry of a
// file into another directory of the cipher dir: its name no longer
// authenticates there, so a mount leaves it out, and kmsfs fsck reports
// it as bad-name, with no plain path (never a guess) and the reason.
func TestFsckNamesMovedName(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	rels := lnWrite(t, v, "a/secret.txt", "b/marker")
	v.Unmount(t)
	from := rels["a/secret.txt"]
	to := filepath.Join(filepath.Dir(rels["b/marker"]), filepath.Base(from))
	if err := os.Rename(v.CipherPath(from), v.CipherPath(to)); err != nil {
		t.Fatal(err)
	}

	out, code := lcFsck(t, v, "--json")
	r := lcFsckReport(t, out, code)
	if code != lcExitDamage || r.Clean() || len(r.Problems) != 1 {
		t.Fatalf("fsck --json: exit %d, %+v; want exit %d and one problem", code, r, lcExitDamage)
	}
	p := lnProblem(t, r, to)
	if p.State != volume.FsckBadName || p.PlainPath != "" || !strings.Contains(p.NameError, "does not authenticate") {
		t.Fatalf("problem %+v; want %s bad-name, no plain path, a name error saying it does not authenticate", p, to)
	}
	out, code = lcFsck(t, v)
	for _, want := range []string{to + ": bad-name", "no plain path: ", "does not authenticate"} {
		if code != lcExitDamage || !strings.Contains(out, want) {
			t.Fatalf("fsck: exit %d, output:\n%s\nwant exit %d and %q", code, out, lcExitDamage, want)
		}
	}
	if strings.Contains(out, "secret") {
		t.Fatalf("fsck guessed a plain name:\n%s", out)
	}
}

// TestFsckNamesKeyFileRefused is the attacker (or the bad disk) who
// deletes, cuts or edits the volume's name key file: the mount refuses
// the volume as before, and kmsfs fsck, read-only and with --repair,
// still checks it: it reports kmsfs.names as the problem with the cause,
// checks every other file by its cipher path (a damaged one is found)
// and exits with the damage code.
func TestFsckNamesKeyFileRefused(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, p string)
		want   string
	}{
		{"attack=deleted", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, "is missing"},
		{"attack=truncated", func(t *testing.T, p string) {
			if err := os.Truncate(p, 100); err != nil {
				t.Fatal(err)
			}
		}, "damaged or not this volume's"},
		{"attack=byte-changed", func(t *testing.T, p string) {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)-5] ^= 0x01
			if err := os.WriteFile(p, raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is damaged"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := suite.StartVolume(t, fusetest.CLIOptions{})
			rels := lnWrite(t, v, "docs/a.txt", "docs/b.txt")
			v.Unmount(t)
			off := lnDamageBlock(t, v, rels["docs/b.txt"])
			c.attack(t, v.CipherPath(volume.NamesName))

			if out, err := v.TryMount(t); err == nil || !strings.Contains(out, volume.NamesName) {
				t.Fatalf("kmsfs mount of a volume whose name key file is refused: %v, want a refusal naming %s:\n%s", err, volume.NamesName, out)
			}
			for _, args := range [][]string{{"--json"}, {"--json", "--repair"}} {
				out, code := lcFsck(t, v, args...)
				r := lcFsckReport(t, out, code)
				if code != lcExitDamage || !strings.Contains(r.NameKeyError, c.want) || len(r.Problems) != 2 {
					t.Fatalf("fsck %v: exit %d, %+v; want exit %d, the name key refused saying %q, two problems", args, code, r, lcExitDamage, c.want)
				}
				if p := lnProblem(t, r, volume.NamesName); p.State == volume.FsckOK || !strings.Contains(p.Detail, c.want) {
					t.Fatalf("fsck %v: %s reported %+v; want it not ok, saying %q", args, volume.NamesName, p, c.want)
				}
				if p := lnProblem(t, r, rels["docs/b.txt"]); p.State != volume.FsckDamaged || len(p.Blocks) != 1 || p.Blocks[0].Offset != off || p.PlainPath != "" {
					t.Fatalf("fsck %v: damaged file reported %+v; want damaged at offset %d, by its cipher path alone", args, p, off)
				}
			}
			out, code := lcFsck(t, v)
			if code != lcExitDamage || !strings.Contains(out, volume.NamesName+": ") || !strings.Contains(out, c.want) || !strings.Contains(out, "name key refused") {
				t.Fatalf("fsck: exit %d, output:\n%s\nwant exit %d naming %s and %q", code, out, lcExitDamage, volume.NamesName, c.want)
			}
		})
	}
}

// TestRewrapNamesPlainPath is the attacker (or the bad disk) who breaks
// both header slots of a file under a long directory name: kmsfs rewrap
// cannot rewrap it and lists it by its cipher path and by the plain path
// a mount shows, in both output forms.
func TestRewrapNamesPlainPath(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	plain := "reports/" + lnLongDir + "/q3.pdf"
	rels := lnWrite(t, v, plain, "reports/ok.txt")
	v.Unmount(t)
	rel := rels[plain]
	lnEdit(t, v, rel, func(f *os.File, l envelope.Layout) {
		// The last byte of each slot's MAC: both slots still parse, so
		// the file needs a rewrap, and neither authenticates.
		for _, off := range []int64{int64(l.SlotSize()) - 1, 2*int64(l.SlotSize()) - 1} {
			lnFlip(t, f, off)
		}
	})

	r, code := rwRewrap(t, v, "--to", "local:"+fusetest.KeyFile(t, t.TempDir(), nil))
	if code != rwExitIncomplete || r.FailedFiles != 1 || len(r.Failed) != 1 {
		t.Fatalf("rewrap: exit %d, %+v; want exit %d and one file failed", code, r, rwExitIncomplete)
	}
	if p := r.Failed[0]; p.Path != rel || p.PlainPath != plain || p.NameError != "" {
		t.Fatalf("failure %+v; want %s with plain path %s", p, rel, plain)
	}
	out, code := lcRun(t, v, "rewrap", v.Cipher)
	for _, want := range []string{"failed: " + rel + ": ", "plain path: " + plain} {
		if code != rwExitIncomplete || !strings.Contains(out, want) {
			t.Fatalf("rewrap: exit %d, output:\n%s\nwant exit %d and %q", code, out, rwExitIncomplete, want)
		}
	}
}

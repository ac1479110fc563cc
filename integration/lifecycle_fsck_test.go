package integration_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/volume"
)

// lcExitDamage is kmsfs fsck's documented exit code for damage found.
const lcExitDamage = 4

// lcFsck runs kmsfs fsck with args and returns its output and exit code.
func lcFsck(t *testing.T, v *fusetest.CLIVolume, args ...string) (string, int) {
	t.Helper()
	return lcRun(t, v, append([]string{"fsck"}, append(args, v.Cipher)...)...)
}

// TestFsckCLI is the attacker (or the bad disk) who changes a byte of a
// cipher file at rest: kmsfs fsck of the local-key volume exits 0 while it
// is intact, and after the edit exits with the damage code, naming the
// file and the block, in both output forms.
func TestFsckCLI(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(v.Path(name), cryPlain(t, crySize), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.Unmount(t)
	for _, args := range [][]string{nil, {"--json"}, {"--repair"}} {
		if out, code := lcFsck(t, v, args...); code != 0 {
			t.Fatalf("fsck %v of an intact volume: exit %d\n%s", args, code, out)
		}
	}

	victim := v.CipherPath("b")
	raw, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x01
	if err := os.WriteFile(victim, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(v.Cipher, victim)
	if err != nil {
		t.Fatal(err)
	}

	out, code := lcFsck(t, v, "--json")
	var r volume.FsckReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("fsck --json (exit %d): %v\n%s", code, err, out)
	}
	if code != lcExitDamage || r.Files != 2 || r.OK != 1 || len(r.Problems) != 1 {
		t.Fatalf("fsck --json of a tampered volume: exit %d, report %+v; want exit %d, one file damaged", code, r, lcExitDamage)
	}
	p := r.Problems[0]
	if p.Path != rel || p.State != volume.FsckDamaged || len(p.Blocks) != 1 {
		t.Fatalf("problem %+v; want %s damaged in one block", p, rel)
	}
	out, code = lcFsck(t, v)
	want := fmt.Sprintf("block %d (plaintext offset %d)", p.Blocks[0].Index, p.Blocks[0].Offset)
	if code != lcExitDamage || !strings.Contains(out, rel) || !strings.Contains(out, want) {
		t.Fatalf("fsck: exit %d, output:\n%s\nwant exit %d naming %s and %q", code, out, lcExitDamage, rel, want)
	}
}

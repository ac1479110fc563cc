package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
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
// file and the block, in both output forms; on a volume of each name mode
// (with encrypted names fsck checks kmsfs.names too).
func TestFsckCLI(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v, victim := lcTwoFiles(t, fusetest.CLIOptions{InitArgs: lcNameArgs(nm.encrypted)})
			files := int64(2)
			if nm.encrypted {
				files += lcNameKeyFiles
			}
			for _, args := range [][]string{nil, {"--json"}, {"--repair"}} {
				if out, code := lcFsck(t, v, args...); code != 0 {
					t.Fatalf("fsck %v of an intact volume: exit %d\n%s", args, code, out)
				}
			}

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
			r := lcFsckReport(t, out, code)
			if code != lcExitDamage || r.Files != files || r.OK != files-1 || len(r.Problems) != 1 {
				t.Fatalf("fsck --json of a tampered volume: exit %d, report %+v; want exit %d, %d files, one damaged", code, r, lcExitDamage, files)
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
		})
	}
}

// TestFsckKeySources is the damaged block found on a volume of each key
// source: a volume written through the mount with local-kms (AWS), a
// SoftHSM token (PKCS#11) or a local key file is reported clean (exit 0),
// and after one byte of a block changes at rest fsck exits with the
// damage code naming the file and the block.
func TestFsckKeySources(t *testing.T) {
	e := fusetest.KMS(t)
	for _, c := range []struct {
		name string
		keys func(t *testing.T) ([]string, []string)
	}{
		{"source=local", func(t *testing.T) ([]string, []string) {
			return []string{"local:" + fusetest.KeyFile(t, t.TempDir(), nil)}, nil
		}},
		{"source=awskms", func(t *testing.T) ([]string, []string) {
			return []string{"awskms:" + kmstest.Alias}, fusetest.AWSEnv(e)
		}},
		{"source=pkcs11", func(t *testing.T) ([]string, []string) {
			return []string{suite.HSM(t).Token("main").AESSpec()}, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			specs, env := c.keys(t)
			v, victim := lcTwoFiles(t, fusetest.CLIOptions{Keys: specs, Env: env})
			files := int64(2 + lcNameKeyFiles)
			out, code := lcFsck(t, v, "--json")
			r := lcFsckReport(t, out, code)
			if code != 0 || !r.Clean() || r.Files != files || r.OK != files {
				t.Fatalf("fsck of an intact volume: exit %d, %+v; want %d files (kmsfs.names included) clean", code, r, files)
			}

			raw, err := os.ReadFile(victim)
			if err != nil {
				t.Fatal(err)
			}
			l, err := lcLayout(raw)
			if err != nil {
				t.Fatal(err)
			}
			raw[l.BlockOffset(3)+40] ^= 0x80
			if err := os.WriteFile(victim, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			rel, err := filepath.Rel(v.Cipher, victim)
			if err != nil {
				t.Fatal(err)
			}
			out, code = lcFsck(t, v, "--json")
			r = lcFsckReport(t, out, code)
			if code != lcExitDamage || r.OK != files-1 || len(r.Problems) != 1 {
				t.Fatalf("fsck after the edit: exit %d, %+v; want exit %d and one file named", code, r, lcExitDamage)
			}
			p := r.Problems[0]
			want := volume.FsckBlock{Index: 3, Offset: 3 * int64(l.BlockSize())}
			if p.Path != rel || p.State != volume.FsckDamaged || len(p.Blocks) != 1 || p.Blocks[0] != want {
				t.Fatalf("problem %+v; want %s (b) damaged in block %+v", p, rel, want)
			}
		})
	}
}

// lcTwoFiles starts a volume of o, writes files a and b of crySize bytes
// through the mount and unmounts it; it returns the volume and the cipher
// file of b, found while mounted (names may be encrypted).
func lcTwoFiles(t *testing.T, o fusetest.CLIOptions) (*fusetest.CLIVolume, string) {
	t.Helper()
	v := suite.StartVolume(t, o)
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(v.Path(name), cryPlain(t, crySize), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	victim, err := v.MountedCipherPath("b")
	if err != nil {
		t.Fatal(err)
	}
	v.Unmount(t)
	return v, victim
}

// lcFsckReport decodes kmsfs fsck --json's output.
func lcFsckReport(t *testing.T, out string, code int) *volume.FsckReport {
	t.Helper()
	var r volume.FsckReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("fsck --json (exit %d): %v\n%s", code, err, out)
	}
	return &r
}

// lcLayout returns the layout a cipher file's header declares.
func lcLayout(raw []byte) (envelope.Layout, error) {
	if len(raw) < envelope.LayoutPrefixSize {
		return envelope.Layout{}, fmt.Errorf("cipher file of %d bytes", len(raw))
	}
	return envelope.DeclaredLayout(raw[:envelope.LayoutPrefixSize])
}

// TestFsckProgressOnlyOnTerminal: the progress bar goes to stderr only
// when stderr is a terminal and the report is not JSON; a script that
// captures stderr gets no bar and no escape codes, and stdout never holds
// one.
func TestFsckProgressOnlyOnTerminal(t *testing.T) {
	// Names in clear: the file is put in place by kmsfs encrypt under a
	// plain name, which a volume with encrypted names reports as bad-name.
	v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: []string{"--plaintext-names"}})
	src := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(src, cryPlain(t, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cryMust(t, v, nil, nil, "encrypt", "--volume", v.Cipher, "-o", v.CipherPath("f"), src)
	for _, c := range []struct {
		terminal, json bool
	}{{false, false}, {false, true}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("terminal=%t,json=%t", c.terminal, c.json), func(t *testing.T) {
			args := []string{"fsck", v.Cipher}
			if c.json {
				args = []string{"fsck", "--json", v.Cipher}
			}
			ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
			defer cancel()
			cmd := v.Command(ctx, nil, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout = &stdout
			var tty *ptyPair
			if c.terminal {
				tty = openPTY(t)
				cmd.Stderr = tty.slave
			} else {
				cmd.Stderr = &stderr
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var drained <-chan []byte
			if tty != nil {
				drained = tty.drain()
			}
			err := cmd.Wait()
			if tty != nil {
				tty.slave.Close()
				select {
				case b := <-drained:
					stderr.Write(b)
				case <-ctx.Done():
					t.Fatal("the terminal's output did not end")
				}
			}
			if err != nil {
				t.Fatalf("fsck: %v\n%s\n%s", err, stdout.String(), stderr.String())
			}
			if strings.ContainsAny(stdout.String(), "\r\x1b") {
				t.Fatalf("stdout holds a bar or escape codes: %q", stdout.String())
			}
			bar := strings.Contains(stderr.String(), "checking")
			if bar != (c.terminal && !c.json) {
				t.Fatalf("stderr %q: bar drawn %t", stderr.String(), bar)
			}
			if !c.terminal && stderr.Len() != 0 {
				t.Fatalf("stderr, not a terminal, holds %q", stderr.String())
			}
		})
	}
}

// ptyPair is a pseudo-terminal: the test reads the master, the process
// writes to the slave.
type ptyPair struct{ master, slave *os.File }

func openPTY(t *testing.T) *ptyPair {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open a terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("terminal number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the terminal's slave: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return &ptyPair{master: m, slave: s}
}

// drain reads the master until every holder of the slave has closed it
// (the read then fails with EIO) and sends what it read.
func (p *ptyPair) drain() <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(p.master)
		ch <- b
	}()
	return ch
}

// TestFsckRepairsCrashRemnant is the crash between the two steps of a
// truncate: block 1 of a four-block file has been resealed as the last
// block (the truncate to two blocks wrote it), and the cut never
// happened. The file still reads whole through the mount; kmsfs fsck
// reports the remnant and exits with the damage code, fsck --repair
// reseals it and exits 0, a check afterwards is clean, and the file reads
// the same plaintext as before.
func TestFsckRepairsCrashRemnant(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	plain := cryPlain(t, crySize)
	if err := os.WriteFile(v.Path("f"), plain, 0o644); err != nil {
		t.Fatal(err)
	}
	cipherFile, err := v.MountedCipherPath("f")
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(cipherFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := lcLayout(before)
	if err != nil {
		t.Fatal(err)
	}
	bs := int64(l.BlockSize())
	if int64(len(plain)) < 3*bs {
		t.Fatalf("%d bytes make too few blocks of %d", len(plain), bs)
	}
	if err := os.Truncate(v.Path("f"), 2*bs); err != nil {
		t.Fatal(err)
	}
	cut, err := os.ReadFile(cipherFile)
	if err != nil {
		t.Fatal(err)
	}
	v.Unmount(t)
	crashed := slices.Clone(before)
	copy(crashed[l.BlockOffset(1):l.BlockOffset(2)], cut[l.BlockOffset(1):])
	if err := os.WriteFile(cipherFile, crashed, 0o600); err != nil {
		t.Fatal(err)
	}

	out, code := lcFsck(t, v, "--json")
	r := lcFsckReport(t, out, code)
	want := []volume.FsckBlock{{Index: 1, Offset: bs}}
	if code != lcExitDamage || len(r.Problems) != 1 || r.Problems[0].State != volume.FsckCrashRemnants || !slices.Equal(r.Problems[0].Remnants, want) {
		t.Fatalf("fsck of the crashed file: exit %d, %+v; want exit %d, block 1 a crash remnant", code, r, lcExitDamage)
	}
	out, code = lcFsck(t, v, "--repair", "--json")
	r = lcFsckReport(t, out, code)
	if code != 0 || r.RemnantsCleared != 1 || len(r.Problems) != 1 || r.Problems[0].State != volume.FsckOK {
		t.Fatalf("fsck --repair: exit %d, %+v; want exit 0 and the remnant resealed", code, r)
	}
	if out, code = lcFsck(t, v); code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("fsck after the repair: exit %d\n%s", code, out)
	}
	v.Mount(t)
	if got, err := os.ReadFile(v.Path("f")); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("after the repair the file reads %d bytes (%v), not the %d written", len(got), err, len(plain))
	}
}

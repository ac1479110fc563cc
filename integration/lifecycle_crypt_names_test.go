package integration_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// cnLong161 and cnLong255 are names whose encrypted forms are too long
// for the backing filesystem: stored as kmsfs.L… with a side file.
var (
	cnLong161 = strings.Repeat("d", 161)
	cnLong255 = strings.Repeat("f", 255)
)

// cnEntries returns the number of entries in the cipher dir at every
// depth, and fails t if any name holds one of plain.
func cnEntries(t *testing.T, cipher string, plain ...string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(cipher, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		for _, s := range plain {
			if d.Name() == s {
				t.Errorf("plaintext name %.20q… in the cipher dir at %s", s, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCryptPathIntoMount writes files by plain path into nested new
// directories with long names (161 and 255 bytes) and a plain one, on a
// volume with encrypted names (the default) and one with names in clear:
// the mount lists and reads them, fsck is clean, and a file the mount
// writes under a long-named directory decrypts by plain path after
// unmount.
func TestCryptPathIntoMount(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: lcNameArgs(nm.encrypted)})
			files := map[string][]byte{
				"reports/2026/q3.pdf":               cryPlain(t, crySize),
				cnLong161 + "/" + cnLong255:         cryPlain(t, 4097),
				"reports/" + cnLong161 + "/sub/a.b": cryPlain(t, 1),
				"top":                               cryPlain(t, 0),
			}
			for p, plain := range files {
				cryMust(t, v, plain, nil, "encrypt", "--volume", v.Cipher, "--path", p)
			}
			if nm.encrypted {
				cnEntries(t, v.Cipher, "reports", "2026", "q3.pdf", cnLong161, cnLong255, "sub", "a.b", "top")
			}
			if out, code := lcFsck(t, v); code != 0 {
				t.Fatalf("fsck after encrypt --path: exit %d\n%s", code, out)
			}
			v.Mount(t)
			for p, plain := range files {
				got, err := os.ReadFile(v.Path(p))
				if err != nil || !bytes.Equal(got, plain) {
					t.Fatalf("%s through the mount: %d bytes, %v; want the %d encrypted", p, len(got), err, len(plain))
				}
			}
			ents, err := os.ReadDir(v.Path(cnLong161))
			if err != nil || len(ents) != 1 || ents[0].Name() != cnLong255 {
				t.Fatalf("mount lists %v, %v in the long-named directory; want %.20q…", ents, err, cnLong255)
			}
			written := cryPlain(t, 3*4096+5)
			if err := os.WriteFile(v.Path(cnLong161+"/by-mount"), written, 0o600); err != nil {
				t.Fatal(err)
			}
			v.Unmount(t)
			out := filepath.Join(t.TempDir(), "restored")
			cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "--path", cnLong161+"/by-mount", "-o", out)
			if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, written) {
				t.Fatalf("decrypt --path of the mount's file: %d bytes, %v; want the %d written", len(got), err, len(written))
			}
			if got := cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "--path", "reports/2026/q3.pdf"); !bytes.Equal(got, files["reports/2026/q3.pdf"]) {
				t.Fatalf("decrypt --path to stdout gave %d bytes, want %d", len(got), crySize)
			}
		})
	}
}

// TestCryptPathMovedName is the attacker who moves the backing entry of a
// file from one directory of the cipher dir into another, where its name
// was not encrypted: decrypt --path of the name in its new directory
// fails, naming the path and the cause, and writes nothing.
func TestCryptPathMovedName(t *testing.T) {
	for _, long := range []bool{false, true} {
		t.Run("long="+boolStr(long), func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			base := "payroll.xlsx"
			if long {
				base = cnLong255
			}
			cryMust(t, v, []byte("salaries"), nil, "encrypt", "--volume", v.Cipher, "--path", "hr/"+base)
			cryMust(t, v, []byte("public"), nil, "encrypt", "--volume", v.Cipher, "--path", "pub/readme")
			v.Mount(t)
			from, err := v.MountedCipherPath("hr/" + base)
			if err != nil {
				t.Fatal(err)
			}
			pubFile, err := v.MountedCipherPath("pub/readme")
			if err != nil {
				t.Fatal(err)
			}
			v.Unmount(t)
			to := filepath.Join(filepath.Dir(pubFile), filepath.Base(from))
			if err := os.Rename(from, to); err != nil {
				t.Fatal(err)
			}
			if long {
				if err := os.Rename(from+names.LongSuffix, to+names.LongSuffix); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(t.TempDir(), "restored")
			_, stderr, err := cryRun(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "--path", "pub/"+base, "-o", out)
			if err == nil || !strings.Contains(stderr, "pub/"+base) || !strings.Contains(stderr, "moved there from another directory") {
				t.Fatalf("decrypt --path of a moved name: %v, %q; want a failure naming the path and the cause", err, stderr)
			}
			if _, err := os.Lstat(out); !os.IsNotExist(err) {
				t.Fatalf("decrypt left %s: %v", out, err)
			}
		})
	}
}

// boolStr names a bool in a subtest name.
func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// TestCryptPathPlantedSymlink is the attacker who replaces a backing
// directory on a plain path with a symbolic link to a directory outside
// the cipher dir holding the same entries: neither decrypt --path nor
// encrypt --path follows it, and nothing is written outside.
func TestCryptPathPlantedSymlink(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: lcNameArgs(nm.encrypted)})
			cryMust(t, v, []byte("secret"), nil, "encrypt", "--volume", v.Cipher, "--path", "d/x")
			v.Mount(t)
			x, err := v.MountedCipherPath("d/x")
			if err != nil {
				t.Fatal(err)
			}
			v.Unmount(t)
			dir := filepath.Dir(x)
			outside := filepath.Join(t.TempDir(), "outside")
			if err := os.Rename(dir, outside); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, dir); err != nil {
				t.Fatal(err)
			}
			before := cnEntries(t, outside)
			for _, args := range [][]string{
				{"decrypt", "--volume", v.Cipher, "--path", "d/x"},
				{"encrypt", "--volume", v.Cipher, "--path", "d/y"},
			} {
				got, stderr, err := cryRun(t, v, []byte("new"), nil, args...)
				if err == nil || len(got) > 0 || !strings.Contains(stderr, "symbolic link") {
					t.Fatalf("kmsfs %s through a planted link: %v, %d bytes out, %q; want a refusal naming the link", args[0], err, len(got), stderr)
				}
			}
			if after := cnEntries(t, outside); after != before {
				t.Fatalf("%d entries outside the cipher dir, were %d", after, before)
			}
		})
	}
}

// TestCryptPathPublicKeyOnly is the producer host that holds only the
// public key of the volume's RSA KMS key: on a volume with encrypted names
// it cannot unwrap the name key, so encrypt --path fails with an error
// that says so and what to do, and writes nothing; on a volume with names
// in clear it places the file, which a host with KMS reads back by path.
func TestCryptPathPublicKeyOnly(t *testing.T) {
	e := fusetest.KMS(t)
	pubFile, noKMS := cryPublicKey(t, e)
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + e.RSAEncrypt.ARN}, Env: fusetest.AWSEnv(e), InitArgs: lcNameArgs(nm.encrypted)})
			before := cnEntries(t, v.Cipher)
			plain := cryPlain(t, crySize)
			args := []string{"encrypt", "--volume", v.Cipher, "--public-key-file", pubFile, "--path", "in/x.tar"}
			_, stderr, err := cryRun(t, v, plain, noKMS, args...)
			if !nm.encrypted {
				if err != nil {
					t.Fatalf("encrypt --path with the public key on a volume with names in clear: %v\n%s", err, stderr)
				}
				if got := cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "--path", "in/x.tar"); !bytes.Equal(got, plain) {
					t.Fatalf("decrypt --path gave %d bytes, want %d", len(got), len(plain))
				}
				return
			}
			if err == nil || !strings.Contains(stderr, "public key") || !strings.Contains(stderr, "--plaintext-names") {
				t.Fatalf("encrypt --path with the public key: %v, %q; want a refusal saying why and pointing at --plaintext-names", err, stderr)
			}
			if after := cnEntries(t, v.Cipher); after != before {
				t.Fatalf("refused encrypt --path left %d new entries in the cipher dir", after-before)
			}
		})
	}
}

// TestCryptOutputIntoCipherDir: encrypt -o into the cipher dir of a volume
// with encrypted names under a plain name (a file the mount would never
// show) is refused, pointing at --path, and writes nothing; with names in
// clear, and outside the cipher dir, -o works as before.
func TestCryptOutputIntoCipherDir(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: lcNameArgs(nm.encrypted)})
			for _, out := range []string{v.CipherPath("q3.pdf"), filepath.Join(t.TempDir(), "q3.pdf")} {
				inside := strings.HasPrefix(out, v.Cipher+"/")
				_, stderr, err := cryRun(t, v, []byte("x"), nil, "encrypt", "--volume", v.Cipher, "-o", out)
				_, statErr := os.Lstat(out)
				if inside && nm.encrypted {
					if err == nil || !strings.Contains(stderr, "--path") || statErr == nil {
						t.Fatalf("encrypt -o %s: %v, %q, file there: %v; want a refusal pointing at --path and no file", out, err, stderr, statErr == nil)
					}
					continue
				}
				if err != nil || statErr != nil {
					t.Fatalf("encrypt -o %s: %v, %q, %v", out, err, stderr, statErr)
				}
			}
		})
	}
}

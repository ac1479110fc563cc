package integration_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

// TestCLIInitNames: `kmsfs init` encrypts names unless --plaintext-names
// asks otherwise (--encrypted-names, the former opt-in, is still accepted,
// hidden, and cannot be combined with it); a volume with encrypted names
// has its name key file, which `kmsfs info` reads as any cipher file, and
// mounts with its names encrypted (TestCLINamesMounted).
func TestCLIInitNames(t *testing.T) {
	cases := []struct {
		flags     []string
		encrypted bool
	}{
		{nil, true},
		{[]string{"--plaintext-names"}, false},
		{[]string{"--encrypted-names"}, true},
	}
	for _, c := range cases {
		name := strings.Join(c.flags, ",")
		if name == "" {
			name = "none"
		}
		t.Run("flags="+name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: c.flags})
			conf, err := volconf.Load(v.Cipher)
			if err != nil {
				t.Fatal(err)
			}
			if conf.EncryptedNames() != c.encrypted {
				t.Fatalf("kmsfs.conf features %q, want encrypted names %v", conf.Features, c.encrypted)
			}
			_, serr := os.Lstat(v.CipherPath(volconf.NamesName))
			if c.encrypted != (serr == nil) {
				t.Fatalf("%s: %v; want it iff names are encrypted", volconf.NamesName, serr)
			}
			if !c.encrypted {
				v.Mount(t)
				return
			}
			out, err := v.Run("info", v.CipherPath(volconf.NamesName))
			if err != nil || !strings.Contains(out, "plain size:     64") || !strings.Contains(out, conf.Keys[0].KeyID) {
				t.Fatalf("kmsfs info %s: %v\n%s", volconf.NamesName, err, out)
			}
			v.Mount(t)
		})
	}
	bin := suite.Kmsfs(t)
	out, err := fusetest.RunKmsfs(bin, nil, nil, "init", "--help")
	if err != nil {
		t.Fatalf("kmsfs init --help: %v\n%s", err, out)
	}
	if !strings.Contains(out, "--plaintext-names") || strings.Contains(out, "encrypted-names") {
		t.Errorf("kmsfs init --help: want --plaintext-names and not the hidden --encrypted-names:\n%s", out)
	}
	cipher := filepath.Join(t.TempDir(), "both")
	out, err = fusetest.RunKmsfs(bin, nil, nil, fusetest.InitArgs([]string{"local:/nonexistent"}, []string{"--plaintext-names", "--encrypted-names"}, cipher)...)
	if err == nil || !strings.Contains(out, "plaintext-names") {
		t.Errorf("kmsfs init --plaintext-names --encrypted-names: %v, want refused naming the flags:\n%s", err, out)
	}
	if _, err := os.Lstat(filepath.Join(cipher, volconf.Name)); err == nil {
		t.Errorf("a refused init wrote %s", volconf.Name)
	}
}

// TestCLINamesMounted mounts a volume with encrypted names through the
// CLI: no name or symlink target of the tree written appears in the
// cipher dir; kmsfs info finds a file's cipher file through the mount;
// a rewrap of the mounted volume reaches every file (found through the
// mount by inode) and the name key file (which the mount hides), so the
// old key retires; after a remount with the old key file gone, every
// name and file reads back.
func TestCLINamesMounted(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.Mount(t)
	long := strings.Repeat("long-name-", 20) + "end"
	tree := map[string]string{
		"salaries-2026.xlsx":             "confidential",
		"projects/alpha/notes.txt":       "alpha notes",
		"projects/" + long + "/x":        "under a long directory name",
		"projects/alpha/" + long + ".md": "a long file name",
	}
	for name, content := range tree {
		if err := os.MkdirAll(filepath.Dir(v.Path(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(v.Path(name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("projects/alpha/notes.txt", v.Path("link-to-notes")); err != nil {
		t.Fatal(err)
	}
	secrets := []string{"salaries-2026", "projects", "alpha", "notes.txt", "long-name-", "link-to-notes"}
	err := filepath.Walk(v.Cipher, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if strings.Contains(fi.Name(), s) {
				t.Errorf("cipher dir entry %s holds the plaintext name %q", p, s)
			}
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if strings.Contains(target, "notes") {
				t.Errorf("cipher dir symlink %s holds the plaintext target %q", p, target)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	out, err := v.Run("info", "--json", v.Path("projects/alpha/notes.txt"))
	var fi volume.FileInfo
	if err != nil || json.Unmarshal([]byte(out), &fi) != nil || fi.PlainSize != int64(len("alpha notes")) ||
		!strings.HasPrefix(fi.CipherPath, v.Cipher+"/") || strings.Contains(fi.CipherPath, "alpha") {
		t.Fatalf("kmsfs info through the mount: %v\n%s", err, out)
	}

	newKey := fusetest.KeyFile(t, t.TempDir(), nil)
	r, code := rwRewrap(t, v, "--to", "local:"+newKey)
	// Every file of the tree and the name key file.
	if code != 0 || !r.Done() || r.Rewrapped != int64(len(tree))+1 || len(r.Retired) != 1 {
		t.Fatalf("rewrap of the mounted volume: exit %d, %+v", code, r)
	}
	v.Unmount(t)
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	v.Mount(t)
	for name, want := range tree {
		if got, err := os.ReadFile(v.Path(name)); err != nil || string(got) != want {
			t.Fatalf("read %s after the rewrap and a remount: %q, %v", name, got, err)
		}
	}
	if target, err := os.Readlink(v.Path("link-to-notes")); err != nil || target != "projects/alpha/notes.txt" {
		t.Fatalf("readlink after the rewrap: %q, %v", target, err)
	}
}

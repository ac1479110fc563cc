package integration_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

// TestCLIInitNames: `kmsfs init` keeps names in plaintext unless
// --encrypted-names asks otherwise (hidden from --help until the mount
// encrypts names); a volume with encrypted names has its name key file,
// which `kmsfs info` reads as any cipher file, and `kmsfs mount` refuses
// it clearly, leaving nothing mounted, rather than writing plaintext
// names into it.
func TestCLIInitNames(t *testing.T) {
	cases := []struct {
		flags     []string
		encrypted bool
	}{
		{nil, false},
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
			v.MountRefused(t, v.Cipher, v.Mnt, `encrypts file names`, `cannot mount volumes with encrypted names yet`)
		})
	}
	out, err := fusetest.RunKmsfs(suite.Kmsfs(t), nil, nil, "init", "--help")
	if err != nil {
		t.Fatalf("kmsfs init --help: %v\n%s", err, out)
	}
	if strings.Contains(out, "encrypted-names") {
		t.Errorf("kmsfs init --help shows --encrypted-names before the mount supports it:\n%s", out)
	}
}

package volconf_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource/local"
)

const testVolumeID = "00112233445566778899aabbccddeeff"

func testConf() *volconf.Conf {
	return &volconf.Conf{
		Version: volconf.Version, VolumeID: testVolumeID, FormatVersion: 1,
		BlockSize: 4096, SlotSize: 1024, DataKeyPolicy: "batched", Features: []string{},
		Keys: []volconf.Key{
			{Spec: "awskms:alias/backups", KeyID: "arn:aws:kms:eu-west-2:111122223333:key/a"},
			{Spec: "local:passphrase", KeyID: "passphrase:0123456789abcdef",
				KDF: &local.KDFParams{Alg: "scrypt", Salt: make([]byte, 16), LogN: 17, R: 8, P: 1}},
		},
	}
}

func TestStorageSpec(t *testing.T) {
	cases := []struct{ spec, want string }{
		{"awskms:alias/x", "awskms:alias/x"},
		{"local:passphrase", "local:passphrase"},
		{"local:/etc/kmsfs/k", volconf.KeyFileSpec},
		{"local:key-file", volconf.KeyFileSpec},
		{"pkcs11:token=t;object=k?module-path=/evil.so&pin-source=env:P", "pkcs11:token=t;object=k"},
		{"pkcs11:token=t;object=k", "pkcs11:token=t;object=k"},
	}
	for _, c := range cases {
		t.Run("spec="+c.spec, func(t *testing.T) {
			if got := volconf.StorageSpec(c.spec); got != c.want {
				t.Fatalf("StorageSpec = %q, want %q", got, c.want)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	cases := []struct {
		name string
		edit func(c *volconf.Conf)
		want []string // substrings, one per line of the diff
	}{
		{"none", func(*volconf.Conf) {}, nil},
		{"legacy-host-parts", func(c *volconf.Conf) {
			c.Keys = append(c.Keys, volconf.Key{Spec: "local:/old/path", KeyID: "file:1"})
		}, []string{"key added: local:key-file (key ID file:1, escrow)"}},
		{"volume-id", func(c *volconf.Conf) { c.VolumeID = strings.Repeat("f", 32) }, []string{"volume ID"}},
		{"policy", func(c *volconf.Conf) { c.DataKeyPolicy = "per-file" }, []string{"data-key policy"}},
		{"block-size", func(c *volconf.Conf) { c.BlockSize = 8192 }, []string{"block size: approved 4096, kmsfs.conf has 8192"}},
		{"slot-size", func(c *volconf.Conf) { c.SlotSize = 2048 }, []string{"header slot size"}},
		{"features", func(c *volconf.Conf) { c.Features = []string{"x"} }, []string{"features"}},
		{"name-key-id", func(c *volconf.Conf) { c.NameKeyID = strings.Repeat("e", 32) }, []string{"name key ID: approved \"\", kmsfs.conf has \"eeee"}},
		{"key-removed", func(c *volconf.Conf) { c.Keys = c.Keys[:1] }, []string{"key removed: local:passphrase"}},
		{"keys-swapped", func(c *volconf.Conf) { c.Keys[0], c.Keys[1] = c.Keys[1], c.Keys[0] }, []string{"moved", "moved"}},
		{"spec", func(c *volconf.Conf) { c.Keys[0].Spec = "awskms:alias/other" }, []string{"spec approved awskms:alias/backups"}},
		{"kdf-log-n", func(c *volconf.Conf) {
			k := *c.Keys[1].KDF
			k.LogN = 1
			c.Keys[1].KDF = &k
		}, []string{"KDF parameters approved scrypt N=2^17 r=8 p=1 salt 00000000…, kmsfs.conf has scrypt N=2^1 r=8 p=1 salt 00000000…"}},
		{"kdf-salt", func(c *volconf.Conf) {
			k := *c.Keys[1].KDF
			k.Salt = make([]byte, 32)
			c.Keys[1].KDF = &k
		}, []string{"KDF parameters"}},
		{"kdf-dropped", func(c *volconf.Conf) { c.Keys[1].KDF = nil }, []string{"kmsfs.conf has none"}},
	}
	for _, c := range cases {
		t.Run("change="+c.name, func(t *testing.T) {
			approved, cur := testConf(), testConf()
			c.edit(cur)
			d := volconf.Diff(approved, cur)
			if len(d) != len(c.want) {
				t.Fatalf("Diff = %q, want %d lines", d, len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(d[i], w) {
					t.Errorf("line %d %q does not say %q", i, d[i], w)
				}
			}
		})
	}
}

func TestConfCheckKeyID(t *testing.T) {
	c := testConf()
	c.Keys[1].KeyID = ""
	if err := c.Check(); err == nil || !strings.Contains(err.Error(), "no key_id") {
		t.Fatalf("Check of a key without key_id: %v", err)
	}
}

// newStore returns a store in a fresh private dir and an anchor for it.
func newStore(t *testing.T) (*volconf.Store, *volconf.Anchor) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "trust")
	a, err := volconf.NewAnchor(testConf(), make([]volconf.HostKey, 2), "/srv/cipher")
	if err != nil {
		t.Fatal(err)
	}
	s := volconf.NewStore(dir, os.Geteuid())
	if err := s.Save(a); err != nil {
		t.Fatal(err)
	}
	return s, a
}

func TestStoreRoundTrip(t *testing.T) {
	s, a := newStore(t)
	got, err := s.Load(testVolumeID)
	if err != nil {
		t.Fatal(err)
	}
	if d := volconf.Diff(&a.Conf, &got.Conf); len(d) > 0 || got.CipherDir != "/srv/cipher" {
		t.Fatalf("loaded anchor differs: %q, %s", d, got.CipherDir)
	}
	for p, want := range map[string]os.FileMode{s.Dir(): 0o700, s.Path(testVolumeID): 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	if ids := s.ApprovedAt("/srv/cipher"); !slices.Equal(ids, []string{testVolumeID}) {
		t.Errorf("ApprovedAt = %q", ids)
	}
	if _, err := s.Load(strings.Repeat("e", 32)); !errors.Is(err, volconf.ErrNotTrusted) {
		t.Errorf("Load of an unknown volume: %v, want ErrNotTrusted", err)
	}
}

func TestStoreUnsafe(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, s *volconf.Store)
	}{
		{"dir=mode-0777", func(t *testing.T, s *volconf.Store) { chmod(t, s.Dir(), 0o777) }},
		{"dir=mode-0720", func(t *testing.T, s *volconf.Store) { chmod(t, s.Dir(), 0o720) }},
		{"file=mode-0622", func(t *testing.T, s *volconf.Store) { chmod(t, s.Path(testVolumeID), 0o622) }},
		{"file=symlink", func(t *testing.T, s *volconf.Store) {
			p := s.Path(testVolumeID)
			if err := os.Rename(p, p+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p+".real", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"dir=symlink", func(t *testing.T, s *volconf.Store) {
			if err := os.Rename(s.Dir(), s.Dir()+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(s.Dir()+".real", s.Dir()); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _ := newStore(t)
			c.attack(t, s)
			if _, err := s.Load(testVolumeID); !errors.Is(err, volconf.ErrInsecure) {
				t.Fatalf("Load: %v, want ErrInsecure", err)
			}
		})
	}
}

func chmod(t *testing.T, p string, m os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, m); err != nil {
		t.Fatal(err)
	}
}

func TestDefaultTrustDir(t *testing.T) {
	cases := []struct {
		name string
		euid int
		env  map[string]string
		want string
	}{
		{"env", 0, map[string]string{"KMSFS_TRUST_DIR": "/x"}, "/x"},
		{"root", 0, map[string]string{"HOME": "/root"}, volconf.SystemTrustDir},
		{"xdg", 1000, map[string]string{"XDG_CONFIG_HOME": "/c", "HOME": "/h"}, "/c/kmsfs/trust"},
		{"home", 1000, map[string]string{"HOME": "/h"}, "/h/.config/kmsfs/trust"},
	}
	for _, c := range cases {
		t.Run("case="+c.name, func(t *testing.T) {
			got, err := volconf.DefaultTrustDir(c.euid, func(k string) (string, bool) { v, ok := c.env[k]; return v, ok })
			if err != nil || got != c.want {
				t.Fatalf("DefaultTrustDir = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

package volconf_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/volconf"
)

// TestLoadHostile plants in a cipher dir what an attacker on the storage
// could put where kmsfs.conf belongs: Load refuses each before parsing,
// without following, blocking or reading without bound.
func TestLoadHostile(t *testing.T) {
	cases := []struct {
		name  string
		plant func(t *testing.T, dir, conf, valid string)
		want  string
	}{
		{"plant=symlink-to-valid-conf", func(t *testing.T, dir, conf, valid string) {
			if err := os.Symlink(valid, conf); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"plant=fifo", func(t *testing.T, dir, conf, valid string) {
			if err := syscall.Mkfifo(conf, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"plant=directory", func(t *testing.T, dir, conf, valid string) {
			if err := os.Mkdir(conf, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"plant=oversize", func(t *testing.T, dir, conf, valid string) {
			raw, err := os.ReadFile(valid)
			if err != nil {
				t.Fatal(err)
			}
			raw = append(raw, bytes.Repeat([]byte(" "), volconf.MaxSize)...)
			if err := os.WriteFile(conf, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := t.TempDir()
			if err := volconf.Save(src, testConf()); err != nil {
				t.Fatal(err)
			}
			if _, err := volconf.Load(src); err != nil {
				t.Fatalf("Load of the valid conf: %v", err)
			}
			dir := t.TempDir()
			c.plant(t, dir, filepath.Join(dir, volconf.Name), filepath.Join(src, volconf.Name))
			_, err := volconf.Load(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load: %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// TestConfCheckNames checks that the encrypted-names feature and its
// name_key_id come together: a kmsfs.conf with one and not the other is
// refused, whichever an editor of the cipher dir dropped.
func TestConfCheckNames(t *testing.T) {
	id := strings.Repeat("ab", 16)
	cases := []struct {
		name      string
		features  []string
		nameKeyID string
		want      string // "" means valid
	}{
		{"features=none,id=none", []string{}, "", ""},
		{"features=encrypted-names,id=valid", []string{volconf.FeatureEncryptedNames}, id, ""},
		{"features=encrypted-names,id=none", []string{volconf.FeatureEncryptedNames}, "", "needs name_key_id"},
		{"features=encrypted-names,id=short", []string{volconf.FeatureEncryptedNames}, id[:30], "needs name_key_id"},
		{"features=encrypted-names,id=upper-hex", []string{volconf.FeatureEncryptedNames}, strings.ToUpper(id), "needs name_key_id"},
		{"features=none,id=valid", []string{}, id, "feature \"encrypted-names\" is not"},
		{"features=encrypted-names-twice,id=valid", []string{volconf.FeatureEncryptedNames, volconf.FeatureEncryptedNames}, id, "listed twice"},
		{"features=unknown,id=none", []string{"compressed-names"}, "", "unknown to this kmsfs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf := testConf()
			conf.Features, conf.NameKeyID = c.features, c.nameKeyID
			err := conf.Check()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Check: %v, want an error saying %q", err, c.want)
			}
			if c.want == "" && conf.EncryptedNames() != (c.nameKeyID != "") {
				t.Fatalf("EncryptedNames = %v with features %q", conf.EncryptedNames(), c.features)
			}
		})
	}
}

package volume_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

// testVolume is a volume made by volume.Init over a fresh local key file,
// approved in a trust dir of the test's own.
type testVolume struct {
	dir, trust, key string
}

func newKeyFile(t *testing.T, path string) {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(path, k, 0o600); err != nil {
		t.Fatal(err)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func initVolume(t *testing.T) testVolume {
	t.Helper()
	return initVolumeNames(t, false)
}

// initVolumeNames is initVolume with names encrypted or not.
func initVolumeNames(t *testing.T, encryptedNames bool) testVolume {
	t.Helper()
	d := t.TempDir()
	v := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust"), key: filepath.Join(d, "key")}
	newKeyFile(t, v.key)
	a, path, err := volume.Init(ctx(t), v.dir, volume.InitOptions{Keys: []string{"local:" + v.key}, TrustDir: v.trust, EncryptedNames: encryptedNames})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("Init's anchor %s: %v", path, err)
	}
	if a.Conf.BlockSize == 0 || len(a.Conf.Keys) != 1 {
		t.Fatalf("Init's conf: %+v", a.Conf)
	}
	return v
}

func (v testVolume) open(t *testing.T, o volume.Options) (*volume.Volume, error) {
	t.Helper()
	o.TrustDir = v.trust
	vol, err := volume.Open(ctx(t), v.dir, o)
	if err == nil {
		t.Cleanup(func() { vol.Close() })
	}
	return vol, err
}

func TestOpenReadWrite(t *testing.T) {
	v := initVolume(t)
	vol, err := v.open(t, volume.Options{CheckKeys: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if vol.Journal == nil {
		t.Fatal("read-write Open has no journal")
	}
	if _, err := os.Stat(filepath.Join(v.dir, volume.JournalName)); err != nil {
		t.Fatalf("journal dir: %v", err)
	}
	if got, want := vol.Format.Layout().BlockSize(), vol.Conf().BlockSize; got != want {
		t.Errorf("envelope block size %d, kmsfs.conf says %d", got, want)
	}
	dk, stanzas, err := vol.Keys.NewDataKey(ctx(t))
	if err != nil {
		t.Fatalf("NewDataKey: %v", err)
	}
	got, err := vol.Keys.UnwrapKey(ctx(t), stanzas)
	if err != nil {
		t.Fatalf("UnwrapKey: %v", err)
	}
	if !bytes.Equal(got, dk) {
		t.Fatal("the manager unwrapped another key than it made")
	}
	if _, err := v.open(t, volume.Options{}); !errors.Is(err, volume.ErrBusy) {
		t.Fatalf("second read-write Open: %v, want ErrBusy", err)
	}
	if err := vol.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := v.open(t, volume.Options{}); err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
}

func TestOpenReadOnlyWritesNothing(t *testing.T) {
	v := initVolume(t)
	vol, err := v.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if vol.Journal != nil {
		t.Error("read-only Open opened a journal")
	}
	if _, err := os.Stat(filepath.Join(v.dir, volume.JournalName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only Open made %s: %v", volume.JournalName, err)
	}
}

// TestOpenRefuses: attacks on the cipher dir and host mistakes that Open
// must refuse, each with a message naming the cause.
func TestOpenRefuses(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, v *testVolume)
		want  string
	}{
		{"untrusted-host", func(t *testing.T, v *testVolume) { v.trust = t.TempDir() }, "not trusted on this host"},
		{"conf-block-size-edited", func(t *testing.T, v *testVolume) {
			c, err := volconf.Load(v.dir)
			if err != nil {
				t.Fatal(err)
			}
			c.BlockSize *= 2
			if err := volconf.Save(v.dir, c); err != nil {
				t.Fatal(err)
			}
		}, "differs from what this host approved"},
		{"conf-replaced-by-other-volume", func(t *testing.T, v *testVolume) {
			other := initVolume(t)
			raw, err := os.ReadFile(filepath.Join(other.dir, volume.ConfName))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(v.dir, volume.ConfName), raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "was kmsfs.conf replaced?"},
		{"key-file-swapped", func(t *testing.T, v *testVolume) { newKeyFile(t, v.key) }, "not the key this volume was approved with"},
		{"conf-is-symlink", func(t *testing.T, v *testVolume) {
			p := filepath.Join(v.dir, volume.ConfName)
			if err := os.Rename(p, p+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p+".real", p); err != nil {
				t.Fatal(err)
			}
		}, volume.ConfName},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := initVolume(t)
			c.setup(t, &v)
			_, err := v.open(t, volume.Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v, want an error containing %q", err, c.want)
			}
			if _, serr := os.Stat(filepath.Join(v.dir, volume.JournalName)); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("a refused Open made %s: %v", volume.JournalName, serr)
			}
		})
	}
}

func TestInitRefuses(t *testing.T) {
	d := t.TempDir()
	key := filepath.Join(d, "key")
	newKeyFile(t, key)
	full := filepath.Join(d, "full")
	if err := os.MkdirAll(full, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, "data"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		dir  string
		o    volume.InitOptions
		want string
	}{
		{"no-key", filepath.Join(d, "a"), volume.InitOptions{}, "at least one key"},
		{"dir-not-empty", full, volume.InitOptions{Keys: []string{"local:" + key}}, "not empty"},
		{"bad-block-size", filepath.Join(d, "b"), volume.InitOptions{Keys: []string{"local:" + key}, BlockSize: 1000}, "block"},
		{"bad-policy", filepath.Join(d, "c"), volume.InitOptions{Keys: []string{"local:" + key}, Policy: "sometimes"}, "policy"},
		{"missing-key-file", filepath.Join(d, "e"), volume.InitOptions{Keys: []string{"local:" + key + ".missing"}}, "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.TrustDir = filepath.Join(d, "trust")
			_, _, err := volume.Init(ctx(t), c.dir, c.o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Init: %v, want an error containing %q", err, c.want)
			}
			if _, serr := os.Stat(filepath.Join(c.dir, volume.ConfName)); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("a refused Init wrote %s: %v", volume.ConfName, serr)
			}
		})
	}
}

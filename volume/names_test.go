package volume_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

// writeNamesFile replaces the volume's name key file with a cipher file
// of plain, written through vol's own keys as a host holding them (or
// only the public half of an RSA key) could.
func writeNamesFile(t *testing.T, vol *volume.Volume, dir string, plain []byte) {
	t.Helper()
	err := volume.WriteAtomic(filepath.Join(dir, volume.NamesName), 0o600, func(f *os.File) error {
		_, err := vol.Encrypt(ctx(t), f, bytes.NewReader(plain))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInitNames makes volumes with and without encrypted names: the
// feature, the key ID and the name key file come together, and every
// Open (read-write, read-only) unwraps the same key, which Close frees.
func TestInitNames(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		for _, ro := range []bool{false, true} {
			t.Run("encrypted="+boolName(encrypted)+",ro="+boolName(ro), func(t *testing.T) {
				tv := initVolumeNames(t, encrypted)
				c, err := volconf.Load(tv.dir)
				if err != nil {
					t.Fatal(err)
				}
				if c.EncryptedNames() != encrypted || (c.NameKeyID != "") != encrypted {
					t.Fatalf("kmsfs.conf features %q, name_key_id %q; want encrypted names %v", c.Features, c.NameKeyID, encrypted)
				}
				_, serr := os.Lstat(filepath.Join(tv.dir, volume.NamesName))
				if encrypted != (serr == nil) {
					t.Fatalf("%s after Init: %v; want it iff names are encrypted", volume.NamesName, serr)
				}
				vol, err := tv.open(t, volume.Options{ReadOnly: ro})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if vol.EncryptedNames() != encrypted {
					t.Fatalf("EncryptedNames = %v, want %v", vol.EncryptedNames(), encrypted)
				}
				key := vol.NameKey()
				if !encrypted {
					if key != nil {
						t.Fatalf("NameKey of a plaintext-names volume: %d bytes, want nil", len(key))
					}
					return
				}
				if len(key) != names.KeySize || names.KeyID(key) != c.NameKeyID {
					t.Fatalf("NameKey: %d bytes of ID %s, want %d bytes of ID %s", len(key), names.KeyID(key), names.KeySize, c.NameKeyID)
				}
				if bytes.Equal(key, make([]byte, names.KeySize)) {
					t.Fatal("NameKey is all zeros")
				}
				first := bytes.Clone(key)
				if err := vol.Close(); err != nil {
					t.Fatal(err)
				}
				if vol.NameKey() != nil || !bytes.Equal(key, make([]byte, names.KeySize)) {
					t.Fatal("Close left the name key in place")
				}
				again, err := tv.open(t, volume.Options{ReadOnly: ro})
				if err != nil {
					t.Fatalf("second Open: %v", err)
				}
				if !bytes.Equal(again.NameKey(), first) {
					t.Fatal("a second Open unwrapped another name key")
				}
			})
		}
	}
}

func boolName(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// TestOpenRefusesNameKeyFile plants in the cipher dir what an attacker on
// the storage could put where the name key file belongs, or edits
// kmsfs.conf around it: every Open, read-write and read-only, refuses
// with a message naming the cause, and never hands out a name key.
func TestOpenRefusesNameKeyFile(t *testing.T) {
	cases := []struct {
		name    string
		plant   func(t *testing.T, tv testVolume)
		want    string
		nameKey bool // the refusal wraps volume.ErrNameKey
	}{
		{"replaced-by-other-volumes", func(t *testing.T, tv testVolume) {
			other := initVolumeNames(t, true)
			raw, err := os.ReadFile(filepath.Join(other.dir, volume.NamesName))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tv.dir, volume.NamesName), raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "damaged or not this volume's", true},
		{"replaced-by-same-volume-other-key", func(t *testing.T, tv testVolume) {
			vol := openFor(t, tv)
			key, err := names.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			writeNamesFile(t, vol, tv.dir, key)
		}, "the file was replaced", true},
		{"replaced-by-same-volume-longer", func(t *testing.T, tv testVolume) {
			vol := openFor(t, tv)
			writeNamesFile(t, vol, tv.dir, append(bytes.Clone(vol.NameKey()), 0))
		}, "holds 65 bytes", true},
		{"truncated-to-0", func(t *testing.T, tv testVolume) { truncateNames(t, tv, 0) }, "damaged or not this volume's", true},
		{"truncated-to-100", func(t *testing.T, tv testVolume) { truncateNames(t, tv, 100) }, "damaged or not this volume's", true},
		{"truncated-by-1", func(t *testing.T, tv testVolume) { truncateNames(t, tv, -1) }, "holds 63 bytes", true},
		{"truncated-to-header", func(t *testing.T, tv testVolume) {
			vol := openFor(t, tv)
			truncateNames(t, tv, vol.Format.Layout().HeaderSize())
		}, "holds 0 bytes", true},
		{"block-byte-changed", func(t *testing.T, tv testVolume) {
			vol := openFor(t, tv)
			flip(t, filepath.Join(tv.dir, volume.NamesName), vol.Format.Layout().BlockOffset(0)+5)
		}, "is damaged", true},
		{"symlink-to-real-file", func(t *testing.T, tv testVolume) {
			p := filepath.Join(tv.dir, volume.NamesName)
			if err := os.Rename(p, p+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p+".real", p); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link", true},
		{"directory", func(t *testing.T, tv testVolume) {
			p := filepath.Join(tv.dir, volume.NamesName)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "is a directory", true},
		{"deleted", func(t *testing.T, tv testVolume) {
			if err := os.Remove(filepath.Join(tv.dir, volume.NamesName)); err != nil {
				t.Fatal(err)
			}
		}, "is missing", true},
		{"conf-name-key-id-edited", func(t *testing.T, tv testVolume) {
			// The attacker also plants a name key of their own and points
			// kmsfs.conf at it: the host's approval pins the ID.
			vol := openFor(t, tv)
			key, err := names.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			writeNamesFile(t, vol, tv.dir, key)
			vol.Close()
			editConf(t, tv, func(c *volconf.Conf) { c.NameKeyID = names.KeyID(key) })
		}, "name key ID: approved", false},
		{"conf-feature-dropped", func(t *testing.T, tv testVolume) {
			// Turning names back to plaintext would make a mount write
			// new names in the clear.
			editConf(t, tv, func(c *volconf.Conf) { c.Features, c.NameKeyID = []string{}, "" })
		}, "features: approved", false},
	}
	for _, c := range cases {
		for _, ro := range []bool{false, true} {
			t.Run("attack="+c.name+",ro="+boolName(ro), func(t *testing.T) {
				tv := initVolumeNames(t, true)
				c.plant(t, tv)
				vol, err := tv.open(t, volume.Options{ReadOnly: ro})
				if err == nil {
					t.Fatalf("Open succeeded (name key of %d bytes), want a refusal saying %q", len(vol.NameKey()), c.want)
				}
				if !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Open: %v, want an error saying %q", err, c.want)
				}
				t.Logf("refused: %v", err)
				if errors.Is(err, volume.ErrNameKey) != c.nameKey {
					t.Fatalf("Open: %v; errors.Is(ErrNameKey) = %v, want %v", err, !c.nameKey, c.nameKey)
				}
				if c.nameKey {
					fsckRefusedNameKey(t, tv, ro, c.want)
				}
			})
		}
	}
}

// fsckRefusedNameKey opens the volume tv, whose name key file Open
// refuses for a reason that says want, as fsck does (NameKeyMayFail):
// without a name key, and fsck lists the name key file as damaged with
// that reason, checks every other file by its cipher path alone (here one
// with a damaged block) and does not call the volume clean.
func fsckRefusedNameKey(t *testing.T, tv testVolume, ro bool, want string) {
	t.Helper()
	vol, err := tv.open(t, volume.Options{ReadOnly: ro, NameKeyMayFail: true})
	if err != nil {
		t.Fatalf("Open with NameKeyMayFail: %v", err)
	}
	defer vol.Close()
	if vol.NameKey() != nil || !errors.Is(vol.NameKeyErr(), volume.ErrNameKey) {
		t.Fatalf("Open with NameKeyMayFail: name key of %d bytes, NameKeyErr %v; want none, and ErrNameKey", len(vol.NameKey()), vol.NameKeyErr())
	}
	if _, _, err := vol.NameCodec(); !errors.Is(err, volume.ErrNameKey) {
		t.Fatalf("NameCodec without the name key: %v, want ErrNameKey", err)
	}
	victim := filepath.Join(tv.dir, "Zm9vYmFyYmF6cXV4cXV1eHh5enp5")
	encryptTo(t, vol, victim, randomBytes(t, fsckSize(vol)))
	flip(t, victim, vol.Format.Layout().BlockOffset(1)+10)
	r, err := vol.Fsck(ctx(t), volume.FsckOptions{Repair: !ro})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if r.Clean() || !strings.Contains(r.NameKeyError, want) || len(r.Problems) != 2 {
		t.Fatalf("Fsck: %+v; want the name key file and the damaged file listed, the name key error saying %q", r, want)
	}
	nk, f := r.Problems[0], r.Problems[1]
	if f.Path == volume.NamesName {
		nk, f = f, nk
	}
	if nk.Path != volume.NamesName || nk.State == volume.FsckOK || nk.State == volume.FsckEmpty || !strings.Contains(nk.Detail, want) {
		t.Fatalf("problem %+v; want %s not ok, saying %q", nk, volume.NamesName, want)
	}
	if f.Path != filepath.Base(victim) || f.State != volume.FsckDamaged || f.PlainPath != "" || f.NameError != "" {
		t.Fatalf("problem %+v; want %s damaged, by its cipher path alone", f, filepath.Base(victim))
	}
}

// openFor opens tv for a test's setup, read-only so that the volume can
// be opened again while it is, and closes it at the test's end: the
// attack runs with the volume's own keys.
func openFor(t *testing.T, tv testVolume) *volume.Volume {
	t.Helper()
	vol, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return vol
}

// truncateNames cuts the name key file to size bytes; a negative size
// cuts that many bytes off its end.
func truncateNames(t *testing.T, tv testVolume, size int64) {
	t.Helper()
	p := filepath.Join(tv.dir, volume.NamesName)
	if size < 0 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
}

// editConf changes kmsfs.conf as an editor of the cipher dir would.
func editConf(t *testing.T, tv testVolume, edit func(*volconf.Conf)) {
	t.Helper()
	c, err := volconf.Load(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	edit(c)
	if err := volconf.Save(tv.dir, c); err != nil {
		t.Fatal(err)
	}
}

// TestInitAfterCrash: an init that stopped between the name key file and
// kmsfs.conf leaves a directory that is not a volume; init into it again
// succeeds and the new volume opens. What init did not leave is refused.
func TestInitAfterCrash(t *testing.T) {
	cases := []struct {
		name  string
		leave func(t *testing.T, dir string)
		want  string // "" means Init succeeds
	}{
		{"left=names", func(t *testing.T, dir string) {}, ""},
		{"left=names+tmp", func(t *testing.T, dir string) {
			writeJunk(t, filepath.Join(dir, "."+volume.NamesName+".kmsfs-tmp-123"))
			writeJunk(t, filepath.Join(dir, volume.ConfName+".tmp-456"))
		}, ""},
		{"left=names+empty-journal", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, volume.JournalName), 0o700); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"left=names+data", func(t *testing.T, dir string) { writeJunk(t, filepath.Join(dir, "data")) }, "holds data"},
		{"left=names-symlink", func(t *testing.T, dir string) {
			p := filepath.Join(dir, volume.NamesName)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/etc/passwd", p); err != nil {
				t.Fatal(err)
			}
		}, "holds " + volume.NamesName},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tv := initVolumeNames(t, true)
			// The crash: kmsfs.conf was never written.
			if err := os.Remove(filepath.Join(tv.dir, volume.ConfName)); err != nil {
				t.Fatal(err)
			}
			c.leave(t, tv.dir)
			tv.trust = filepath.Join(t.TempDir(), "trust")
			_, _, err := volume.Init(ctx(t), tv.dir, volume.InitOptions{Keys: []string{"local:" + tv.key}, TrustDir: tv.trust, EncryptedNames: true})
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Init: %v, want an error saying %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Init over what a crash left: %v", err)
			}
			vol, err := tv.open(t, volume.Options{})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if len(vol.NameKey()) != names.KeySize {
				t.Fatalf("NameKey: %d bytes", len(vol.NameKey()))
			}
			ents, err := os.ReadDir(tv.dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.Contains(e.Name(), "tmp") {
					t.Errorf("Init left %s", e.Name())
				}
			}
		})
	}
}

func writeJunk(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRewrapNameKeyFile rotates a volume with encrypted names to a new
// key: the name key file moves with every other file, and the volume
// opens without the old key to the same name key.
func TestRewrapNameKeyFile(t *testing.T) {
	tv := initVolumeNames(t, true)
	files := rewrapFiles(t, tv, 6)
	before := bytes.Clone(openFor(t, tv).NameKey())
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if !r.Done() || r.Files != 7 || r.Rewrapped != 7 || len(r.Retired) != 1 {
		t.Fatalf("report %+v, want 7 files (6 and %s) rewrapped and the old key retired", r, volume.NamesName)
	}
	if err := os.Remove(tv.key); err != nil {
		t.Fatal(err)
	}
	tv.key = newKey
	newID := keyIDOf(t, tv, newKey)
	checkFiles(t, tv, files, []string{newID})
	fi, err := volume.Info(filepath.Join(tv.dir, volume.NamesName))
	if err != nil {
		t.Fatal(err)
	}
	if len(fi.Stanzas) != 1 || fi.Stanzas[0].KeyID != newID {
		t.Fatalf("%s stanzas %+v, want the new key's alone", volume.NamesName, fi.Stanzas)
	}
	vol, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open under the new key alone: %v", err)
	}
	if !bytes.Equal(vol.NameKey(), before) {
		t.Fatal("the rewrap changed the name key")
	}
}

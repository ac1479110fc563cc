package integration_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// ftBadFile is one file seeded into a cipher dir behind kmsfs's back.
type ftBadFile struct {
	name  string
	make  func(good []byte, l ftLayout) []byte // from a good cipher file
	cause string                               // what the log line must say
}

func ftBadFiles(foreign []byte) []ftBadFile {
	patch := func(off int, v uint16) func([]byte, ftLayout) []byte {
		return func(good []byte, l ftLayout) []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint16(b[off:], v)
			binary.BigEndian.PutUint16(b[int(l.H/2)+off:], v)
			return b
		}
	}
	return []ftBadFile{
		{"garbage", func([]byte, ftLayout) []byte { return ftBytes(ftRand(11), 10000) }, "not a valid kmsfs file"},
		{"garbage-short", func([]byte, ftLayout) []byte { return ftBytes(ftRand(12), 100) }, "shorter than its header"},
		{"garbage-after-magic", func([]byte, ftLayout) []byte {
			return append([]byte("KMFS"), ftBytes(ftRand(13), 9000)...)
		}, "not a valid kmsfs file"},
		{"header-truncated-in-slot-0", func(g []byte, l ftLayout) []byte { return g[:l.H/2-100] }, "shorter than its header"},
		{"header-truncated-in-slot-1", func(g []byte, l ftLayout) []byte { return g[:l.H-1] }, "shorter than its header"},
		{"version=3", patch(4, 3), "version"},
		{"flags=1", patch(6, 1), "flag"},
		{"foreign-volume", func([]byte, ftLayout) []byte { return foreign }, "another volume"},
		{"dir/garbage-nested", func([]byte, ftLayout) []byte { return ftBytes(ftRand(14), 5000) }, "not a valid kmsfs file"},
	}
}

// TestBadInput seeds a cipher dir with garbage, cut headers, a header of
// an unknown format version and unknown flags, and a file copied from
// another volume, and mounts it: the mount starts, listings and stat show
// every name, opening each bad file fails with EIO and one log line naming
// the file and the cause, a bad file can be removed or replaced, and every
// good file keeps reading back, also after a remount. With names in clear
// the bad files are planted under new names; with encrypted names, where
// nobody without the name key can make a valid new name, they replace the
// backing files of names the mount made.
func TestBadInput(t *testing.T) {
	for _, m := range sxNameModes {
		t.Run("names="+m.name, func(t *testing.T) { ftBadInput(t, m.encrypted) })
	}
}

func ftBadInput(t *testing.T, encNames bool) {
	opts := fusetest.CLIOptions{InitArgs: ftNamesInit(encNames)}
	v := suite.InitVolume(t, opts)
	// A second volume under the same key: only its volume ID differs.
	opts.Keys = []string{"local:" + v.Key}
	other := suite.InitVolume(t, opts)
	other.MountForeground(t)
	if err := os.WriteFile(other.Path("f"), ftBytes(ftRand(20), 9000), 0o644); err != nil {
		t.Fatal(err)
	}
	foreignPath := other.BackingPath(t, "f")
	other.Unmount(t)
	foreign, err := os.ReadFile(foreignPath)
	if err != nil {
		t.Fatal(err)
	}

	v.MountForeground(t)
	good := map[string][]byte{
		"good-a":     ftBytes(ftRand(21), 3*4096+5),
		"good-b":     ftBytes(ftRand(22), 10),
		"dir/good-c": ftBytes(ftRand(23), 4096),
		"empty":      {},
	}
	if err := os.Mkdir(v.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range good {
		if err := os.WriteFile(v.Path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bad := ftBadFiles(foreign)
	back := map[string]string{"good-a": v.BackingPath(t, "good-a")}
	for _, b := range bad {
		if !encNames {
			back[b.name] = v.CipherPath(b.name)
			continue
		}
		if err := os.WriteFile(v.Path(b.name), []byte("replaced behind the mount's back"), 0o644); err != nil {
			t.Fatal(err)
		}
		back[b.name] = v.BackingPath(t, b.name)
	}
	v.Unmount(t)
	l := ftReadLayout(t, v.Cipher)
	model, err := os.ReadFile(back["good-a"])
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		if err := os.WriteFile(back[b.name], b.make(model, l), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	v.MountForeground(t)
	t.Run("listing", func(t *testing.T) {
		want := []string{"dir", "empty", "foreign-volume", "good-a", "good-b"}
		for _, b := range bad {
			if !strings.Contains(b.name, "/") {
				want = append(want, b.name)
			}
		}
		slices.Sort(want)
		want = slices.Compact(want)
		ents, err := os.ReadDir(v.Mnt)
		if err != nil {
			t.Fatalf("readdir: %v", err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
			if _, err := e.Info(); err != nil {
				t.Errorf("stat %s: %v", e.Name(), err)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("readdir: got %v, want %v", got, want)
		}
		if _, err := os.Stat(v.Path("dir/garbage-nested")); err != nil {
			t.Errorf("stat dir/garbage-nested: %v", err)
		}
	})
	for _, b := range bad {
		t.Run("open="+b.name, func(t *testing.T) {
			mark := v.LogMark()
			ftBounded(t, "open "+b.name, func() error {
				f, err := os.Open(v.Path(b.name))
				if err == nil {
					f.Close()
				}
				if mntErrno(err) != syscall.EIO {
					t.Errorf("open %s: got %v, want EIO", b.name, err)
				}
				return nil
			})
			var lines []string
			for _, l := range v.LogSince(mark) {
				if l.F["level"] == "error" && l.F["path"] == b.name && l.F["op"] == "open" {
					lines = append(lines, l.Raw)
				}
			}
			if len(lines) != 1 || !strings.Contains(fusetest.ParseLogLine(lines[0]).F["msg"], b.cause) {
				t.Errorf("want one log line op=open path=%s saying %q, got:\n%s", b.name, b.cause, strings.Join(lines, "\n"))
			}
		})
		ftCheckGood(t, v, good) // a bad open changes nothing for the others
	}
	// O_TRUNC discards the old content, so replacing a bad file needs
	// neither its header nor its key (fs.Node.Open cuts before it opens).
	t.Run("replace=garbage", func(t *testing.T) {
		data := ftBytes(ftRand(24), 5000)
		if err := os.WriteFile(v.Path("garbage"), data, 0o644); err != nil {
			t.Fatalf("open(O_WRONLY|O_TRUNC) and write a bad file: %v", err)
		}
		good["garbage"] = data
	})
	t.Run("remove=garbage-short", func(t *testing.T) {
		if err := os.Remove(v.Path("garbage-short")); err != nil {
			t.Errorf("remove a bad file: %v", err)
		}
	})
	t.Run("rename=version=3", func(t *testing.T) {
		if err := os.Rename(v.Path("version=3"), v.Path("dir/version=3")); err != nil {
			t.Errorf("rename a bad file: %v", err)
		}
	})
	t.Run("create=dir/new", func(t *testing.T) {
		data := ftBytes(ftRand(25), 7000)
		if err := os.WriteFile(v.Path("dir/new"), data, 0o644); err != nil {
			t.Fatalf("write a new file: %v", err)
		}
		good["dir/new"] = data
		ftCheckGood(t, v, good)
	})
	v.Remount(t)
	t.Run("remounted", func(t *testing.T) { ftCheckGood(t, v, good) })
}

// ftCheckGood reads every good file back, bounded.
func ftCheckGood(t *testing.T, v *fusetest.CLIVolume, good map[string][]byte) {
	t.Helper()
	for name := range good {
		ftCheckRead(t, v, name, good)
	}
}

// TestBadInputConf corrupts kmsfs.conf in ways a disk, an editor or a newer
// kmsfs could, and checks that mount refuses at once, mounts nothing, and
// says on stderr what is wrong and in which file. With the conf restored
// the volume mounts again.
func TestBadInputConf(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	confPath := filepath.Join(v.Cipher, "kmsfs.conf")
	orig, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(change func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(orig, &m); err != nil {
			t.Fatal(err)
		}
		change(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		conf []byte // nil: no kmsfs.conf at all
		want string
	}{
		{"conf=missing", nil, "not a kmsfs cipher dir"},
		{"conf=empty", []byte{}, "corrupt"},
		{"conf=garbage", ftBytes(ftRand(30), 300), "corrupt"},
		{"conf=truncated", orig[:len(orig)/2], "corrupt"},
		{"conf=unknown-field", edit(func(m map[string]any) { m["compression"] = "zstd" }), "corrupt or from another kmsfs version"},
		{"conf=version-99", edit(func(m map[string]any) { m["version"] = 99 }), "configuration version 99"},
		{"conf=format-version-3", edit(func(m map[string]any) { m["format_version"] = 3 }), "file format version 3"},
		{"conf=unknown-feature", edit(func(m map[string]any) { m["features"] = []string{"compression"} }), `feature "compression" is unknown`},
		{"conf=bad-volume-id", edit(func(m map[string]any) { m["volume_id"] = "xyz" }), "volume_id"},
		{"conf=bad-block-size", edit(func(m map[string]any) { m["block_size"] = 1000 }), "block size"},
		{"conf=no-keys", edit(func(m map[string]any) { m["keys"] = []any{} }), "no keys"},
		{"conf=bad-key-spec", edit(func(m map[string]any) { m["keys"] = []any{map[string]any{"spec": "nosuch:thing"}} }), "nosuch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.conf == nil {
				os.Remove(confPath)
			} else if err := os.WriteFile(confPath, c.conf, 0o644); err != nil {
				t.Fatal(err)
			}
			err := v.TryMountForeground(t)
			if err == nil {
				v.Unmount(t)
				t.Fatalf("mount succeeded with a corrupt kmsfs.conf")
			}
			if fusetest.IsMounted(t, v.Mnt) {
				t.Errorf("mount failed but %s is mounted", v.Mnt)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) || (c.conf != nil && !strings.Contains(msg, "kmsfs.conf")) {
				t.Errorf("mount's message does not say %q and name kmsfs.conf:\n%s", c.want, msg)
			}
		})
	}
	if err := os.WriteFile(confPath, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	v.MountForeground(t)
}

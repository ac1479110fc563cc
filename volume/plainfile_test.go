package volume_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/volume"
)

// encryptPath writes plain at the plain path rel of v with EncryptPath.
func encryptPath(t *testing.T, v *volume.Volume, rel string, plain []byte) error {
	t.Helper()
	_, err := v.EncryptPath(ctx(t), rel, 0o640, bytes.NewReader(plain))
	return err
}

// decryptPath returns the plaintext of the plain path rel of v.
func decryptPath(t *testing.T, v *volume.Volume, rel string) ([]byte, error) {
	t.Helper()
	f, err := v.OpenPath(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out bytes.Buffer
	_, err = v.Decrypt(ctx(t), &out, f, rel)
	return out.Bytes(), err
}

// cipherNames returns the names of every entry in dir, at every depth.
func cipherNames(t *testing.T, dir string) []string {
	t.Helper()
	var all []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		all = append(all, d.Name())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// openMode makes a volume with encrypted names or names in clear and opens
// it read-only until the test ends.
func openMode(t *testing.T, encrypted bool) *volume.Volume {
	t.Helper()
	v, err := initVolumeNames(t, encrypted).open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return v
}

// volumeWithD is openMode with a file written at d/x, and the backing
// directory of d.
func volumeWithD(t *testing.T, encrypted bool) (*volume.Volume, string) {
	t.Helper()
	v := openMode(t, encrypted)
	if err := encryptPath(t, v, "d/x", []byte("secret")); err != nil {
		t.Fatalf("EncryptPath: %v", err)
	}
	for _, n := range cipherNames(t, v.Dir) {
		if fi, err := os.Lstat(filepath.Join(v.Dir, n)); err == nil && fi.IsDir() && !strings.Contains(n, ".") {
			return v, filepath.Join(v.Dir, n)
		}
	}
	t.Fatal("no backing directory of d")
	return nil, ""
}

// TestEncryptPathRoundTrip writes files by plain path into new nested
// directories, short and long names (up to 255 bytes), overwrites one,
// and reads them back by plain path; fsck finds the volume clean, no
// temporary file is left, and with encrypted names no plaintext name is
// in the cipher dir.
func TestEncryptPathRoundTrip(t *testing.T) {
	long161, long255 := strings.Repeat("l", 161), strings.Repeat("m", 255)
	paths := []string{"top.pdf", "a/b/c/q3.pdf", longDir + "/" + long255, "a/" + long161 + "/x", "a/b/c/q3.pdf"}
	for _, encrypted := range []bool{true, false} {
		t.Run("encrypted="+boolName(encrypted), func(t *testing.T) {
			v := openMode(t, encrypted)
			want := map[string][]byte{}
			for i, p := range paths {
				plain := randomBytes(t, 1000*i+1)
				if err := encryptPath(t, v, p, plain); err != nil {
					t.Fatalf("EncryptPath %s: %v", p, err)
				}
				want[p] = plain
			}
			for p, plain := range want {
				got, err := decryptPath(t, v, p)
				if err != nil || !bytes.Equal(got, plain) {
					t.Fatalf("%s: %d bytes, %v; want the %d written", p, len(got), err, len(plain))
				}
			}
			r, err := v.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil || !r.Clean() {
				t.Fatalf("fsck: %+v, %v; want clean", r, err)
			}
			for _, n := range cipherNames(t, v.Dir) {
				if strings.Contains(n, "kmsfs-tmp") {
					t.Errorf("temporary %s left in the cipher dir", n)
				}
				if !encrypted {
					continue
				}
				for _, plain := range []string{"top.pdf", "q3.pdf", "a", "b", "c", "x", long161, long255, longDir} {
					if n == plain {
						t.Errorf("plaintext name %.20q in the cipher dir", n)
					}
				}
			}
		})
	}
}

// TestEncryptPathRefused: paths a mount could not show are refused before
// anything is written.
func TestEncryptPathRefused(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		cases := []string{"", "/abs", "a//b", "a/../b", "./a", "a/", strings.Repeat("n", 256)}
		if !encrypted {
			cases = append(cases, volume.ConfName, volume.NamesName+"/x")
		}
		for _, rel := range cases {
			t.Run("encrypted="+boolName(encrypted)+",path="+strings.ReplaceAll(rel, "/", "|")[:min(len(rel), 20)], func(t *testing.T) {
				v := openMode(t, encrypted)
				before := len(cipherNames(t, v.Dir))
				if err := encryptPath(t, v, rel, []byte("x")); !errors.Is(err, volume.ErrPlainPath) {
					t.Fatalf("EncryptPath %q: %v; want %v", rel, err, volume.ErrPlainPath)
				}
				if after := len(cipherNames(t, v.Dir)); after != before {
					t.Fatalf("EncryptPath %q made %d entries", rel, after-before)
				}
			})
		}
	}
}

// TestOpenPathMovedName is the attacker who moves the backing entry of a
// file (with a long name's side file) from one directory of the cipher
// dir into another: its name authenticates only where it was made, so the
// plain path in its new directory does not resolve, and neither does the
// old one.
func TestOpenPathMovedName(t *testing.T) {
	for _, long := range []bool{false, true} {
		t.Run("long="+boolName(long), func(t *testing.T) {
			vol, nt := namesVolume(t)
			base := "x"
			if long {
				base = longDir
			}
			nt.entry("a/" + base)
			nt.mkdir("b")
			if err := encryptPath(t, vol, "a/"+base, []byte("secret")); err != nil {
				t.Fatalf("EncryptPath: %v", err)
			}
			from := nt.cipher("a/" + base)
			to := filepath.Join(nt.cipher("b"), filepath.Base(from))
			if err := os.Rename(from, to); err != nil {
				t.Fatal(err)
			}
			if long {
				if err := os.Rename(from+names.LongSuffix, to+names.LongSuffix); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range []string{"b/" + base, "a/" + base} {
				got, err := decryptPath(t, vol, p)
				if !errors.Is(err, volume.ErrNoFile) || len(got) > 0 || !strings.Contains(err.Error(), p) {
					t.Fatalf("decrypt %s: %q, %v; want %v naming the path", p, got, err, volume.ErrNoFile)
				}
			}
		})
	}
}

// TestPlainPathSymlinkNotFollowed is the attacker who replaces a backing
// directory on a plain path with a symbolic link to a directory outside
// the cipher dir holding what it held: neither reading nor writing by
// plain path follows it, and nothing is written outside.
func TestPlainPathSymlinkNotFollowed(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run("encrypted="+boolName(encrypted), func(t *testing.T) {
			v, dir := volumeWithD(t, encrypted)
			outside := filepath.Join(t.TempDir(), "outside")
			if err := os.Rename(dir, outside); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, dir); err != nil {
				t.Fatal(err)
			}
			before := cipherNames(t, outside)
			if got, err := decryptPath(t, v, "d/x"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
				t.Fatalf("decrypt d/x through a planted link: %q, %v; want a refusal naming the link", got, err)
			}
			if err := encryptPath(t, v, "d/y", []byte("new")); err == nil || !strings.Contains(err.Error(), "symbolic link") {
				t.Fatalf("EncryptPath d/y through a planted link: %v; want a refusal naming the link", err)
			}
			if after := cipherNames(t, outside); len(after) != len(before) {
				t.Fatalf("outside the cipher dir: %v, was %v", after, before)
			}
		})
	}
}

// TestCheckCipherOutput: a cipher file written with -o into the cipher dir
// of a volume with encrypted names under a name that is no stored name
// would be invisible to the mount, and is refused; the stored name of a
// plain path, a path outside, and any path with names in clear pass.
func TestCheckCipherOutput(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		v, stored := volumeWithD(t, encrypted)
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(v.Dir, link); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name, path string
			refused    bool
		}{
			{"plain-name", filepath.Join(v.Dir, "reports", "q3.pdf"), true},
			{"plain-name-at-root", filepath.Join(v.Dir, "q3.pdf"), true},
			{"through-link", filepath.Join(link, "q3.pdf"), true},
			{"stored-name", stored, false},
			{"outside", filepath.Join(t.TempDir(), "q3.pdf"), false},
			{"relative", relTo(t, v.Dir, "q3.pdf"), true},
			{"new-directory", filepath.Join(v.Dir, "new", "dir", "q3.pdf"), true},
		} {
			t.Run("encrypted="+boolName(encrypted)+",out="+c.name, func(t *testing.T) {
				err := v.CheckCipherOutput(c.path)
				if want := c.refused && encrypted; errors.Is(err, volume.ErrInvisible) != want || (err != nil) != want {
					t.Fatalf("CheckCipherOutput %s: %v; want refused %v", c.path, err, want)
				}
				if err != nil && !strings.Contains(err.Error(), "--path") {
					t.Fatalf("refusal %v does not point at --path", err)
				}
			})
		}
	}
}

// relTo returns the path of name in dir relative to the working
// directory, as a user types it.
func relTo(t *testing.T, dir, name string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// TestCheckCipherOutputRelative: a volume opened by a relative cipher dir
// (kmsfs encrypt --volume cipher) still sees -o cipher/q3.pdf as inside
// it.
func TestCheckCipherOutputRelative(t *testing.T) {
	tv := initVolumeNames(t, true)
	t.Chdir(filepath.Dir(tv.dir))
	tv.dir = filepath.Base(tv.dir)
	v, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	for _, out := range []string{filepath.Join(tv.dir, "q3.pdf"), "./" + tv.dir + "/d/q3.pdf"} {
		t.Run("out="+strings.ReplaceAll(out, "/", "|"), func(t *testing.T) {
			if err := v.CheckCipherOutput(out); !errors.Is(err, volume.ErrInvisible) {
				t.Fatalf("CheckCipherOutput %s: %v; want %v", out, err, volume.ErrInvisible)
			}
		})
	}
}

// failingReader gives n bytes, then fails: an input cut off mid-way.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errors.New("input cut off")
	}
	m := min(len(p), r.n)
	r.n -= m
	return m, nil
}

// TestEncryptPathWholeOrNothing: an input that fails mid-way leaves the
// file at the plain path as it was (absent, or the old content), and no
// temporary file in the cipher dir.
func TestEncryptPathWholeOrNothing(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		for _, existing := range []bool{false, true} {
			t.Run("encrypted="+boolName(encrypted)+",existing="+boolName(existing), func(t *testing.T) {
				v := openMode(t, encrypted)
				old := randomBytes(t, 5000)
				if existing {
					if err := encryptPath(t, v, "d/"+longDir, old); err != nil {
						t.Fatalf("EncryptPath: %v", err)
					}
				}
				if _, err := v.EncryptPath(ctx(t), "d/"+longDir, 0o600, &failingReader{n: 3 << 20}); err == nil {
					t.Fatal("EncryptPath of a failing input succeeded")
				}
				got, err := decryptPath(t, v, "d/"+longDir)
				switch {
				case existing && (err != nil || !bytes.Equal(got, old)):
					t.Fatalf("old file after a failed write: %d bytes, %v; want the %d of before", len(got), err, len(old))
				case !existing && !errors.Is(err, volume.ErrNoFile):
					t.Fatalf("after a failed write: %d bytes, %v; want %v", len(got), err, volume.ErrNoFile)
				}
				for _, n := range cipherNames(t, v.Dir) {
					if strings.Contains(n, "kmsfs-tmp") {
						t.Errorf("temporary %s left in the cipher dir", n)
					}
				}
			})
		}
	}
}

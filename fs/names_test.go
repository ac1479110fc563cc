package fs_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// withNames returns o with encrypted names: a codec of a fresh random
// name key, and the root ID of MountFS's volume.
func withNames(t testing.TB, o kfs.Options) kfs.Options {
	t.Helper()
	key := make([]byte, 64)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	c, err := names.New(key)
	if err != nil {
		t.Fatal(err)
	}
	o.Names, o.RootDirID = c, names.RootDirID(envelopetest.VolumeID)
	return o
}

// mountNames mounts a fresh cipher dir with encrypted names.
func mountNames(t *testing.T) (*fusetest.InProcess, *names.Codec) {
	t.Helper()
	o := withNames(t, kfs.Options{Xattr: true})
	return fusetest.MountFS(t, 4096, o), o.Names
}

// cipherPath returns the cipher dir's path of the plaintext path rel of
// m, encrypting it one name at a time as the mount does.
func cipherPath(t *testing.T, m *fusetest.InProcess, c *names.Codec, rel string) string {
	t.Helper()
	id := names.RootDirID(envelopetest.VolumeID)
	p := m.Cipher
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		nm, err := c.Encrypt(id, part)
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(p, nm.Backing)
		if i < len(parts)-1 {
			id = readDirID(t, p)
		}
	}
	return p
}

// readDirID returns the ID of the cipher dir's directory dir.
func readDirID(t *testing.T, dir string) names.DirID {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, names.DirIDFile))
	if err != nil {
		t.Fatal(err)
	}
	id, err := names.ParseDirIDLink(target)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// list returns the sorted names of dir.
func list(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	return got
}

// cipherEntries returns the sorted names in the cipher dir's directory
// dir, without kmsfs.dirid.
func cipherEntries(t *testing.T, dir string) []string {
	t.Helper()
	var got []string
	for _, n := range list(t, dir) {
		if n != names.DirIDFile {
			got = append(got, n)
		}
	}
	return got
}

// TestNamesRoundTrip: names of every byte value a name may hold, of every
// length 1..255 and in Unicode are created, listed, looked up and read
// back under themselves, before and after a remount.
func TestNamesRoundTrip(t *testing.T) {
	m, _ := mountNames(t)
	var want []string
	for b := 1; b < 256; b++ {
		if b != '/' {
			want = append(want, "b"+string([]byte{byte(b)}))
		}
	}
	for l := 1; l <= names.MaxNameLen; l++ {
		want = append(want, strings.Repeat(string(rune('a'+l%26)), l))
	}
	want = append(want, "ünïcödé-名前-🙂", strings.Repeat("名", 85), ".hidden", "..x", "kmsfs.conf", "kmsfs.dirid")
	dir := m.Path("d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
			t.Fatalf("create %q (%d bytes): %v", name, len(name), err)
		}
	}
	slices.Sort(want)
	for _, remount := range []bool{false, true} {
		t.Run(fmt.Sprintf("remount=%v", remount), func(t *testing.T) {
			if remount {
				m.Remount()
			}
			if got := list(t, dir); !slices.Equal(got, want) {
				t.Fatalf("listing: %d names, want %d", len(got), len(want))
			}
			for _, name := range want {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || string(b) != name {
					t.Errorf("read %q (%d bytes): %q, %v", name, len(name), b, err)
				}
			}
		})
	}
	if got, err := os.ReadDir(m.Cipher); err != nil || len(got) != 3 {
		t.Errorf("cipher dir's root: %v, %v; want kmsfs.conf, kmsfs.journal and d", got, err)
	}
}

// TestNamesTooLong: a name of 256 bytes is refused as the kernel would,
// and leaves nothing behind.
func TestNamesTooLong(t *testing.T) {
	m, _ := mountNames(t)
	err := os.WriteFile(m.Path(strings.Repeat("n", 256)), nil, 0o644)
	if !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("create a 256-byte name: %v, want ENAMETOOLONG", err)
	}
}

// TestNamesRenameAcrossDirs: files and directories, under short and long
// names, move between directories; a moved directory keeps its contents,
// and no side file of an old name stays behind.
func TestNamesRenameAcrossDirs(t *testing.T) {
	short, long := "name", strings.Repeat("L", 200)
	for _, kind := range []string{"file", "dir"} {
		for _, from := range []string{short, long} {
			for _, to := range []string{short, long} {
				t.Run(fmt.Sprintf("kind=%s,from=%d,to=%d", kind, len(from), len(to)), func(t *testing.T) {
					m, c := mountNames(t)
					for _, d := range []string{"a", "b"} {
						if err := os.Mkdir(m.Path(d), 0o755); err != nil {
							t.Fatal(err)
						}
					}
					src, dst := filepath.Join(m.Path("a"), from), filepath.Join(m.Path("b"), to)
					content := filepath.Join(src, long)
					if kind == "dir" {
						if err := os.Mkdir(src, 0o755); err != nil {
							t.Fatal(err)
						}
					} else {
						content = src
					}
					if err := os.WriteFile(content, []byte("content"), 0o644); err != nil {
						t.Fatal(err)
					}
					if err := os.Rename(src, dst); err != nil {
						t.Fatalf("rename: %v", err)
					}
					m.Remount()
					if got := list(t, m.Path("a")); len(got) != 0 {
						t.Errorf("a after the rename: %q", got)
					}
					if got := list(t, m.Path("b")); !slices.Equal(got, []string{to}) {
						t.Errorf("b after the rename: %q", got)
					}
					moved := dst
					if kind == "dir" {
						moved = filepath.Join(dst, long)
					}
					if b, err := os.ReadFile(moved); err != nil || string(b) != "content" {
						t.Errorf("read %s: %q, %v", moved, b, err)
					}
					if got := cipherEntries(t, cipherPath(t, m, c, "a")); len(got) != 0 {
						t.Errorf("cipher dir of a keeps %q", got)
					}
				})
			}
		}
	}
}

// TestNamesHardLinks: a hard link under a short or long name in another
// directory reads the same file, and outlives the first name.
func TestNamesHardLinks(t *testing.T) {
	for _, name := range []string{"link", strings.Repeat("h", 255)} {
		t.Run(fmt.Sprintf("len=%d", len(name)), func(t *testing.T) {
			m, _ := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			first, second := m.Path(name), filepath.Join(m.Path("d"), name)
			if err := os.WriteFile(first, []byte("shared"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(first, second); err != nil {
				t.Fatalf("link: %v", err)
			}
			if err := os.Remove(first); err != nil {
				t.Fatal(err)
			}
			m.Remount()
			if b, err := os.ReadFile(second); err != nil || string(b) != "shared" {
				t.Errorf("read the link: %q, %v", b, err)
			}
			if got := list(t, m.Path("d")); !slices.Equal(got, []string{name}) {
				t.Errorf("listing: %q", got)
			}
			if got := cipherEntries(t, m.Cipher); len(got) != 3 {
				t.Errorf("cipher dir's root after the unlink: %q, want kmsfs.conf, kmsfs.journal and d", got)
			}
		})
	}
}

// TestNamesSymlinks: targets of every size class, up to the longest a
// symlink may have, read back with their own length as size, also after
// a rename across directories, a hard link and a remount.
func TestNamesSymlinks(t *testing.T) {
	for _, size := range []int{1, 3039, 3040, names.MaxTargetLen} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			m, _ := mountNames(t)
			target := strings.Repeat("t/", size/2) + strings.Repeat("x", size%2)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			link, moved, hard := m.Path("l"), filepath.Join(m.Path("d"), "moved"), m.Path("hard")
			if err := os.Symlink(target, link); err != nil {
				t.Fatalf("symlink: %v", err)
			}
			check := func(p string) {
				t.Helper()
				got, err := os.Readlink(p)
				if err != nil || got != target {
					t.Errorf("readlink %s: %d bytes, %v; want %d bytes", p, len(got), err, size)
				}
				if st, err := os.Lstat(p); err != nil || st.Size() != int64(size) {
					t.Errorf("lstat %s: %v, %v; want size %d", p, st, err, size)
				}
			}
			check(link)
			if err := os.Rename(link, moved); err != nil {
				t.Fatalf("rename: %v", err)
			}
			if err := os.Link(moved, hard); err != nil {
				t.Fatalf("link: %v", err)
			}
			m.Remount()
			check(moved)
			check(hard)
			for _, p := range []string{moved, hard} {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
			if got := cipherEntries(t, m.Cipher); len(got) != 3 {
				t.Errorf("cipher dir's root after the unlinks: %q", got)
			}
		})
	}
}

// TestNamesNotInCipherDir: with encrypted names, no name and no symlink
// target of a tree appears in the cipher dir, neither in its names nor in
// the bytes of its files and links.
func TestNamesNotInCipherDir(t *testing.T) {
	m, _ := mountNames(t)
	secrets := []string{"salaries-2026.xlsx", "board-minutes", strings.Repeat("confidential-", 19), "target-of-a-link",
		"long-target-" + strings.Repeat("secret/", 580)}
	tree := map[string]string{ // path: symlink target, or "" for a file
		secrets[1]:                    "",
		secrets[1] + "/" + secrets[0]: "",
		secrets[1] + "/" + secrets[2]: "",
		"link":                        secrets[3],
		"longlink":                    secrets[4],
	}
	if err := os.Mkdir(m.Path(secrets[1]), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, target := range tree {
		switch {
		case p == secrets[1]:
		case target != "":
			if err := os.Symlink(target, m.Path(p)); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(m.Path(p), []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.Unmount()
	defer m.Mount()
	seen := 0
	err := filepath.WalkDir(m.Cipher, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		seen++
		var content []byte
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			content = []byte(target)
		case d.Type().IsRegular():
			if content, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		for _, s := range secrets {
			needle := s[:min(len(s), 16)]
			if strings.Contains(d.Name(), needle) || bytes.Contains(content, []byte(needle)) {
				t.Errorf("%s shows %q", p, needle)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < len(tree) {
		t.Fatalf("walked %d entries of the cipher dir, want at least %d", seen, len(tree))
	}
}

// tamperCase is an attack on the cipher dir of a mount with encrypted
// names, and what the directory d then lists.
type tamperCase struct {
	attack string
	tamper func(t *testing.T, m *fusetest.InProcess, c *names.Codec)
	want   []string
}

// makeTree makes the directories d and other through the mount, and the
// files at paths in them, each holding its own path.
func makeTree(t *testing.T, m *fusetest.InProcess, paths ...string) {
	t.Helper()
	for _, d := range []string{"d", "other"} {
		if err := os.Mkdir(m.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range paths {
		if err := os.WriteFile(m.Path(p), []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// flipBacking renames the cipher dir's entry p to another backing name
// of the same form: its first letter changed, still base64url.
func flipBacking(t *testing.T, p string) {
	t.Helper()
	b := []byte(filepath.Base(p))
	b[0] = 'A' + (b[0]+1)%26
	rename(t, p, filepath.Join(filepath.Dir(p), string(b)))
}

// TestNamesTampered: entries changed in the cipher dir behind the mount
// (a flipped name, a name moved from another directory, a name written
// under another key, two long names' side files swapped, a directory's
// ID changed) are left out of the listing and logged, never shown under
// a wrong name; a directory whose ID is gone fails with EIO.
func TestNamesTampered(t *testing.T) {
	long1, long2 := strings.Repeat("1", 200), strings.Repeat("2", 200)
	cases := []tamperCase{
		{"flipped-name", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			flipBacking(t, cipherPath(t, m, c, "d/victim"))
		}, []string{"kept", long1, long2}},
		{"moved-from-other-dir", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			p := cipherPath(t, m, c, "other/stranger")
			rename(t, p, filepath.Join(filepath.Dir(cipherPath(t, m, c, "d/victim")), filepath.Base(p)))
		}, []string{"kept", long1, long2, "victim"}},
		{"foreign-key", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			other := withNames(t, kfs.Options{}).Names
			dp := cipherPath(t, m, c, "d/victim")
			nm, err := other.Encrypt(readDirID(t, filepath.Dir(dp)), "foreign")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(filepath.Dir(dp), nm.Backing), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"kept", long1, long2, "victim"}},
		{"side-files-swapped", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			p1, p2 := cipherPath(t, m, c, "d/"+long1)+names.LongSuffix, cipherPath(t, m, c, "d/"+long2)+names.LongSuffix
			tmp := p1 + ".swap"
			rename(t, p1, tmp)
			rename(t, p2, p1)
			rename(t, tmp, p2)
		}, []string{"kept", "victim"}},
		{"dirid-changed", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			p := filepath.Join(filepath.Dir(cipherPath(t, m, c, "d/victim")), names.DirIDFile)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(names.DirID(bytes.Repeat([]byte{7}, 16)).LinkTarget(), p); err != nil {
				t.Fatal(err)
			}
		}, nil},
	}
	for _, tc := range cases {
		t.Run("attack="+tc.attack, func(t *testing.T) {
			m, c := mountNames(t)
			makeTree(t, m, "d/victim", "d/kept", "d/"+long1, "d/"+long2, "other/stranger")
			m.Unmount()
			tc.tamper(t, m, c)
			mark := m.Log.Mark()
			m.Mount()
			got := list(t, m.Path("d"))
			slices.Sort(tc.want)
			if !slices.Equal(got, tc.want) {
				t.Errorf("listing after the attack: %q, want %q", got, tc.want)
			}
			if log := m.Log.Since(mark); !strings.Contains(log, "left out of the listing") {
				t.Errorf("no log line for the entry left out; log:\n%s", log)
			}
			for _, name := range got {
				if b, err := os.ReadFile(m.Path("d/" + name)); err != nil || string(b) != "d/"+name {
					t.Errorf("read d/%s: %q, %v", name, b, err)
				}
			}
		})
	}
	// A directory whose ID is gone or unreadable: its entries cannot be
	// named, so every use of it fails with EIO and a log line, and none
	// is shown under a guessed ID.
	unreadable := []struct {
		attack string
		tamper func(t *testing.T, p string)
	}{
		{"dirid-removed", func(t *testing.T, p string) {}},
		{"dirid-regular-file", func(t *testing.T, p string) {
			if err := os.WriteFile(p, make([]byte, 16), 0o400); err != nil {
				t.Fatal(err)
			}
		}},
		{"dirid-malformed-target", func(t *testing.T, p string) {
			if err := os.Symlink("not-a-directory-id", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"dirid-path-target", func(t *testing.T, p string) {
			// A link to a file holding an ID: the target is not followed.
			if err := os.Symlink("../../kmsfs.conf", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"dirid-directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range unreadable {
		t.Run("attack="+tc.attack, func(t *testing.T) {
			m, c := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(m.Path("d/victim"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			m.Unmount()
			p := filepath.Join(cipherPath(t, m, c, "d"), names.DirIDFile)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			tc.tamper(t, p)
			mark := m.Log.Mark()
			m.Mount()
			if _, err := os.ReadDir(m.Path("d")); !errors.Is(err, syscall.EIO) {
				t.Errorf("list d: %v, want EIO", err)
			}
			if _, err := os.Stat(m.Path("d/victim")); !errors.Is(err, syscall.EIO) {
				t.Errorf("stat d/victim: %v, want EIO", err)
			}
			if log := m.Log.Since(mark); !strings.Contains(log, names.DirIDFile) {
				t.Errorf("no log line naming the directory ID; log:\n%s", log)
			}
		})
	}
}

func rename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// TestNamesRmdir: a directory that is not empty is refused and keeps its
// ID (its entries still list after a remount); one whose only content is
// what a crash leaves (an orphan side file, a mkdir's temporary
// directory) is removed.
func TestNamesRmdir(t *testing.T) {
	m, c := mountNames(t)
	for _, p := range []string{"full", "orphan"} {
		if err := os.Mkdir(m.Path(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(m.Path("full/f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.Path("full")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("rmdir a full directory: %v, want ENOTEMPTY", err)
	}
	m.Unmount()
	orphan := filepath.Join(cipherPath(t, m, c, "orphan"), names.LongPrefix+strings.Repeat("A", 43)+names.LongSuffix)
	if err := os.WriteFile(orphan, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// What a crash in a mkdir leaves: its temporary directory with an ID.
	tmpDir := filepath.Join(filepath.Dir(orphan), ".kmsfs-tmp-0123456789abcdef")
	if err := os.Mkdir(tmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(names.DirID{}.LinkTarget(), filepath.Join(tmpDir, names.DirIDFile)); err != nil {
		t.Fatal(err)
	}
	m.Mount()
	if got := list(t, m.Path("full")); !slices.Equal(got, []string{"f"}) {
		t.Errorf("full after the refused rmdir: %q", got)
	}
	if err := os.Remove(m.Path("orphan")); err != nil {
		t.Errorf("rmdir a directory holding only what a crash left: %v", err)
	}
	if _, err := os.Lstat(cipherPath(t, m, c, "orphan")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cipher dir keeps the removed directory: %v", err)
	}
}

// TestPosixNames runs go-fuse's posixtest cases over a mount with
// encrypted names, as TestPosix does with names in the clear.
func TestPosixNames(t *testing.T) {
	m, _ := mountNames(t)
	runPosixtest(t, m)
}

// TestNamesOwnFilesUnreachable: kmsfs's own files in the cipher dir
// (the volume's files, a directory's ID, a long name's side file) cannot
// be reached through the mount by their names, which are encrypted like
// any other; a file made under such a name is an ordinary entry and
// leaves kmsfs's own file untouched.
func TestNamesOwnFilesUnreachable(t *testing.T) {
	m, c := mountNames(t)
	long := strings.Repeat("s", 200)
	if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.Path("d/"+long), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	side := filepath.Base(cipherPath(t, m, c, "d/"+long))
	conf, err := os.ReadFile(filepath.Join(m.Cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"kmsfs.conf", "kmsfs.journal", "d/" + names.DirIDFile, "d/" + side, "d/" + side + names.LongSuffix} {
		t.Run("name="+filepath.Base(p)[:min(20, len(filepath.Base(p)))], func(t *testing.T) {
			if _, err := os.Lstat(m.Path(p)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("lstat %s: %v, want ENOENT", p, err)
			}
			if err := os.WriteFile(m.Path(p), []byte("mine"), 0o644); err != nil {
				t.Fatalf("create %s: %v", p, err)
			}
			if b, err := os.ReadFile(m.Path(p)); err != nil || string(b) != "mine" {
				t.Errorf("read %s: %q, %v", p, b, err)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(m.Cipher, "kmsfs.conf")); err != nil || !bytes.Equal(b, conf) {
		t.Errorf("kmsfs.conf changed: %q, %v", b, err)
	}
	m.Remount()
	if b, err := os.ReadFile(m.Path("d/" + long)); err != nil || len(b) != 0 {
		t.Errorf("read the long name after the remount: %q, %v", b, err)
	}
}

// TestNamesRenameOverDir: a directory renamed over an empty one replaces
// it (whose backing directory holds its ID); over one with an entry it
// is refused, and that one keeps its ID and its entry.
func TestNamesRenameOverDir(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("target-full=%v", full), func(t *testing.T) {
			m, _ := mountNames(t)
			for _, d := range []string{"src", "dst"} {
				if err := os.Mkdir(m.Path(d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(m.Path("src/in-src"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if full {
				if err := os.WriteFile(m.Path("dst/in-dst"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// (os.Rename refuses a directory target itself.)
			err := unix.Rename(m.Path("src"), m.Path("dst"))
			if full != errors.Is(err, syscall.ENOTEMPTY) || !full && err != nil {
				t.Fatalf("rename over dst: %v", err)
			}
			m.Remount()
			want := []string{"in-src"}
			if full {
				want = []string{"in-dst"}
			}
			if got := list(t, m.Path("dst")); !slices.Equal(got, want) {
				t.Errorf("dst lists %q, want %q", got, want)
			}
		})
	}
}

// TestNamesSymlinkExchange: two symlinks exchanged (RENAME_EXCHANGE)
// across directories keep their own targets, whether kept in the backing
// symlink or, too long for it, beside it.
func TestNamesSymlinkExchange(t *testing.T) {
	for _, sizes := range [][2]int{{names.MaxTargetLen, 10}, {10, names.MaxTargetLen}, {names.MaxTargetLen, 3500}} {
		t.Run(fmt.Sprintf("sizes=%d,%d", sizes[0], sizes[1]), func(t *testing.T) {
			m, _ := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			a, b := m.Path("a"), m.Path("d/b")
			ta, tb := strings.Repeat("a", sizes[0]), strings.Repeat("b", sizes[1])
			for p, target := range map[string]string{a: ta, b: tb} {
				if err := os.Symlink(target, p); err != nil {
					t.Fatal(err)
				}
			}
			if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
				t.Fatalf("exchange: %v", err)
			}
			m.Remount()
			for p, want := range map[string]string{a: tb, b: ta} {
				if got, err := os.Readlink(p); err != nil || got != want {
					t.Errorf("readlink %s: %d bytes, %v; want %d bytes", p, len(got), err, len(want))
				}
			}
		})
	}
}

// TestNamesTamperedWhileMounted: a backing name moved in from another
// directory, or altered, in the cipher dir while the mount is up and has
// just listed both directories (so that it holds their names decrypted)
// is left out of the next listing and logged: a name the mount has seen
// in one directory is never shown in another, nor under a changed
// backing name.
func TestNamesTamperedWhileMounted(t *testing.T) {
	cases := []tamperCase{
		{"moved-from-other-dir", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			p := cipherPath(t, m, c, "other/stranger")
			rename(t, p, filepath.Join(cipherPath(t, m, c, "d"), filepath.Base(p)))
		}, []string{"kept", "stranger", "touch"}},
		{"backing-name-altered", func(t *testing.T, m *fusetest.InProcess, c *names.Codec) {
			flipBacking(t, cipherPath(t, m, c, "d/stranger"))
		}, []string{"kept", "touch"}},
	}
	for _, tc := range cases {
		t.Run("attack="+tc.attack, func(t *testing.T) {
			m, c := mountNames(t)
			makeTree(t, m, "d/kept", "d/stranger", "other/stranger")
			for d, want := range map[string][]string{"d": {"kept", "stranger"}, "other": {"stranger"}} {
				if got := list(t, m.Path(d)); !slices.Equal(got, want) {
					t.Fatalf("%s before the attack: %q, want %q", d, got, want)
				}
			}
			tc.tamper(t, m, c)
			mark := m.Log.Mark()
			// A change through the mount, so that the listing reaches
			// the daemon.
			if err := os.WriteFile(m.Path("d/touch"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if got := list(t, m.Path("d")); !slices.Equal(got, tc.want) {
				t.Errorf("listing after the attack: %q, want %q", got, tc.want)
			}
			if log := m.Log.Since(mark); !strings.Contains(log, "left out of the listing") {
				t.Errorf("no log line for the entry left out; log:\n%s", log)
			}
		})
	}
}

package integration_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Helpers of the suites' runs with encrypted names: long names, a tree
// of names and symlink targets to look for, and the search of the cipher
// dir for them.

// sxMinSecret is the shortest name sxNoPlainNames looks for: a shorter
// string turns up by chance in megabytes of ciphertext or among encoded
// names, so names meant to be looked for are at least this long.
const sxMinSecret = 12

// sxNamesBlockSizes returns the block sizes a suite runs with: all of
// sxBlockSizes with names in the clear or under make soak, and only the
// first with encrypted names in make test, where names change nothing
// the block size does.
func sxNamesBlockSizes(encNames bool) []int {
	if encNames && !ftSoak() {
		return sxBlockSizes[:1]
	}
	return sxBlockSizes
}

// sxLongName returns a name of 161 to 255 bytes (chosen by i) starting
// with prefix: its encrypted form exceeds the backing filesystem's name
// limit, so kmsfs stores it hashed, with a side file holding it in full.
func sxLongName(prefix string, i int) string {
	n := 161 + (i*37)%95
	b := []byte(prefix + "-")
	for len(b) < n {
		b = append(b, "long-name-"...)
	}
	return string(b[:n])
}

// sxTreeEntry is one entry of sxNamesTree: a directory (target and
// content empty, dir set), a file (content) or a symlink (target).
type sxTreeEntry struct {
	name, target, content string
	dir                   bool
	link                  string // a hard link to name, also made
}

// sxNamesTree returns the tree of names and symlink targets that runs
// with encrypted names make beside their own files and then look for in
// the cipher dir: short and long names, nested directories, a hard link,
// and symlink targets short, long and of the maximum length (4095 bytes,
// whose encrypted form no backing symlink can hold).
func sxNamesTree() []sxTreeEntry {
	longDir := sxLongName("secret-tree-long-directory", 1)
	maxTarget := strings.Repeat("secret-target-component/", 4095/24+1)[:4095]
	return []sxTreeEntry{
		{name: "secret-tree-alpha", dir: true},
		{name: "secret-tree-alpha/secret-tree-beta.txt", content: "beta", link: "secret-tree-alpha/secret-tree-hard-link"},
		{name: longDir, dir: true},
		{name: longDir + "/" + sxLongName("secret-tree-long-file", 2), content: "long"},
		{name: "secret-tree-short-symlink", target: "secret-tree-alpha/secret-tree-beta.txt"},
		{name: "secret-tree-alpha/" + sxLongName("secret-tree-long-symlink", 3), target: "../" + longDir},
		{name: "secret-tree-max-symlink", target: maxTarget},
	}
}

// sxMakeTree makes tree under dir.
func sxMakeTree(t *testing.T, dir string, tree []sxTreeEntry) {
	t.Helper()
	for _, e := range tree {
		p := filepath.Join(dir, e.name)
		var err error
		switch {
		case e.dir:
			err = os.Mkdir(p, 0o755)
		case e.target != "":
			err = os.Symlink(e.target, p)
		default:
			if err = os.WriteFile(p, []byte(e.content), 0o644); err == nil && e.link != "" {
				err = os.Link(p, filepath.Join(dir, e.link))
			}
		}
		if err != nil {
			t.Fatalf("make the names tree: %v", err)
		}
	}
}

// sxCheckTree checks that every entry of tree reads back under dir.
func sxCheckTree(t *testing.T, dir string, tree []sxTreeEntry) {
	t.Helper()
	for _, e := range tree {
		p := filepath.Join(dir, e.name)
		switch {
		case e.dir:
			if _, err := os.ReadDir(p); err != nil {
				t.Errorf("names tree: list %s: %v", sxShort(e.name), err)
			}
		case e.target != "":
			if got, err := os.Readlink(p); err != nil || got != e.target {
				t.Errorf("names tree: readlink %s: %d bytes (want %d): %v", sxShort(e.name), len(got), len(e.target), err)
			}
		default:
			for _, n := range []string{e.name, e.link} {
				if n == "" {
					continue
				}
				if got, err := os.ReadFile(filepath.Join(dir, n)); err != nil || string(got) != e.content {
					t.Errorf("names tree: read %s: %q, %v", sxShort(n), got, err)
				}
			}
		}
	}
}

// sxTreeSecrets returns every name component and symlink target of tree,
// and extra, to look for.
func sxTreeSecrets(tree []sxTreeEntry, extra ...string) []string {
	secrets := extra
	for _, e := range tree {
		for _, n := range []string{e.name, e.link} {
			if n != "" {
				secrets = append(secrets, filepath.Base(n))
			}
		}
		if e.target != "" {
			secrets = append(secrets, e.target)
		}
	}
	return secrets
}

// sxNoPlainNames searches the whole cipher dir, the names of its entries,
// its symlinks' targets and every byte of its files (the volume's own
// files, the journal among them), for every run of sxMinSecret bytes of
// each of secrets at least that long, so that a name cut short or a part
// of a path is found too: none may appear. It fails the test if no
// secret is that long.
func sxNoPlainNames(t *testing.T, cipher string, secrets []string) {
	t.Helper()
	entries, files, n := sxSearchCipherDir(t, cipher, secrets, func(string) bool { return true })
	if n == 0 {
		t.Fatal("no name long enough to look for in the cipher dir")
	}
	t.Logf("searched %d cipher dir entries (%d files) for %d names", entries, files, n)
}

// sxSearchCipherDir is sxNoPlainNames, reading the bytes of only the
// files for which read (given the path relative to cipher) is true. It
// returns the entries and files searched and the secrets looked for; with
// none long enough, it searches nothing.
func sxSearchCipherDir(t *testing.T, cipher string, secrets []string, read func(rel string) bool) (entries, files, n int) {
	t.Helper()
	heads := map[string]string{} // every sxMinSecret-byte run: a secret holding it
	for _, s := range secrets {
		if len(s) < sxMinSecret {
			continue
		}
		n++
		for i := 0; i+sxMinSecret <= len(s); i++ {
			heads[s[i:i+sxMinSecret]] = s
		}
	}
	if n == 0 {
		return 0, 0, 0
	}
	found := 0
	search := func(where string, b []byte) {
		seen := map[string]bool{} // each name once per place
		for i := 0; i+sxMinSecret <= len(b); i++ {
			if s, ok := heads[string(b[i:i+sxMinSecret])]; ok && !seen[s] {
				seen[s] = true
				found++
				if found <= 10 {
					t.Errorf("%s holds %q, of the plaintext name %q, at byte %d", where, b[i:i+sxMinSecret], sxShort(s), i)
				}
			}
		}
	}
	err := filepath.WalkDir(cipher, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		rel, _ := filepath.Rel(cipher, p)
		search("cipher dir entry "+sxShort(rel), []byte(d.Name()))
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			search("the target of cipher dir symlink "+sxShort(rel), []byte(target))
		case d.Type().IsRegular() && read(rel):
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files++
			search("cipher file "+sxShort(rel), b)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the cipher dir %s: %v", cipher, err)
	}
	if found > 10 {
		t.Errorf("%d more plaintext names in the cipher dir", found-10)
	}
	return entries, files, n
}

// sxShort shortens a long name for messages.
func sxShort(name string) string {
	if len(name) <= 40 {
		return name
	}
	return fmt.Sprintf("%s...(%d bytes)", name[:32], len(name))
}

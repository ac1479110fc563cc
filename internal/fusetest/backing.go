package fusetest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// BackingPath returns the cipher dir's entry behind the slash-separated
// name as the mount serves it, of any type: directory, symlink, special
// file, or a file whose header does not parse (MountedCipherPath needs a
// cipher file with a header). With encrypted names this is how a test
// finds the entry to edit, replace or plant at. The volume must be
// mounted; a name it cannot find fails the test.
func (v *CLIVolume) BackingPath(t testing.TB, name string) string {
	t.Helper()
	p, err := v.backingPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// backingPath finds name's backing entry component by component by
// identity, not by name, so it works whether names are stored in clear or
// encrypted: the entry of the backing directory whose inode number is the
// one the mount reports (the mount shows backing inode numbers). Of a
// file with several hard links it may return any of them.
func (v *CLIVolume) backingPath(name string) (string, error) {
	plain, back := v.Mnt, v.Cipher
	for _, part := range strings.Split(name, "/") {
		plain = filepath.Join(plain, part)
		var st unix.Stat_t
		if err := unix.Lstat(plain, &st); err != nil {
			return "", fmt.Errorf("fusetest: backing entry of %s: %s: %w", name, plain, err)
		}
		next, err := entryWithIno(back, st.Ino)
		if err != nil {
			return "", fmt.Errorf("fusetest: backing entry of %s: %w", name, err)
		}
		back = next
	}
	return back, nil
}

// entryWithIno returns the path of the entry of directory dir whose inode
// number is ino.
func entryWithIno(dir string, ino uint64) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && st.Ino == ino {
			return p, nil
		}
	}
	return "", fmt.Errorf("no entry of %s has inode %d", dir, ino)
}

// heldPath returns the path DaemonHolds looks for: name's backing entry
// while the mount serves it, else (a name since removed) its path with
// names in clear.
func (v *CLIVolume) heldPath(name string) string {
	if p, err := v.backingPath(name); err == nil {
		return p
	}
	return v.CipherPath(name)
}

package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// mntOps is a fresh local-key volume, mounted by the CLI with args, for
// one operation test.
func mntOps(t testing.TB, args ...string) *fusetest.CLIVolume {
	t.Helper()
	return suite.StartVolume(t, fusetest.CLIOptions{MountArgs: args})
}

// mntRandom returns n bytes of seeded random data.
func mntRandom(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 'o', 'p', 's'}).Read(b)
	return b
}

// mntWriteFile writes data to p (created 0644) or fails the test.
func mntWriteFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
}

// mntCheckFile fails the test unless the file at p holds exactly want.
func mntCheckFile(t testing.TB, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %s", p, mntDiff(got, want))
	}
}

// mntDiff describes how got differs from want.
func mntDiff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d: %#x, want %#x (%d bytes, want %d)", i, got[i], want[i], len(got), len(want))
		}
	}
	if len(got) != len(want) {
		return fmt.Sprintf("got %d bytes, want %d", len(got), len(want))
	}
	return "equal"
}

// mntLstat lstats p or fails the test.
func mntLstat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

// mntOpen opens p or fails the test; the file is closed when the test ends.
func mntOpen(t testing.TB, p string, flag int, perm os.FileMode) *os.File {
	t.Helper()
	f, err := os.OpenFile(p, flag, perm)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// mntUmask sets the process umask for the test and restores it after:
// modes the kernel gives new entries depend on it.
func mntUmask(t testing.TB, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// mntCipherLeaks walks a cipher dir and returns the regular files that
// contain secret.
func mntCipherLeaks(t testing.TB, cipher string, secret []byte) []string {
	t.Helper()
	var leaks []string
	err := filepath.WalkDir(cipher, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(raw, secret) {
			leaks = append(leaks, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return leaks
}

// mntErrno returns the errno inside err, or 0.
func mntErrno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// mntWantErrno fails the test unless err carries want.
func mntWantErrno(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if got := mntErrno(err); got != want {
		t.Fatalf("%s: got error %v, want %v (%s)", what, err, want, unix.ErrnoName(want))
	}
}

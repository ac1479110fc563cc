package integration_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsReaddir checks readdir: every entry once with its type, a large
// directory, no kmsfs.conf at the root, and entries made and removed
// between listings.
func TestOpsReaddir(t *testing.T) {
	v := mntOps(t)
	want := map[string]os.FileMode{}
	for i := range 1500 {
		name := fmt.Sprintf("f%04d", i)
		mntWriteFile(t, v.Path(name), nil)
		want[name] = 0
	}
	for name, mk := range map[string]func(string) error{
		"dir":  func(p string) error { return os.Mkdir(p, 0o755) },
		"link": func(p string) error { return os.Symlink("f0001", p) },
		"fifo": func(p string) error { return unix.Mkfifo(p, 0o644) },
	} {
		if err := mk(v.Path(name)); err != nil {
			t.Fatal(err)
		}
	}
	want["dir"], want["link"], want["fifo"] = os.ModeDir, os.ModeSymlink, os.ModeNamedPipe
	check := func(t *testing.T) {
		t.Helper()
		ents, err := os.ReadDir(v.Mnt)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]os.FileMode{}
		for _, e := range ents {
			if _, dup := got[e.Name()]; dup {
				t.Fatalf("%s listed twice", e.Name())
			}
			got[e.Name()] = e.Type()
		}
		if len(got) != len(want) {
			var extra []string
			for name := range got {
				if _, ok := want[name]; !ok {
					extra = append(extra, name)
				}
			}
			t.Fatalf("%d entries, want %d; unexpected: %q", len(got), len(want), extra)
		}
		for name, typ := range want {
			if g, ok := got[name]; !ok || g != typ {
				t.Fatalf("%s: listed %v (%v), want type %v", name, g, ok, typ)
			}
		}
	}
	t.Run("listing", check)
	t.Run("changed", func(t *testing.T) {
		for _, name := range []string{"f0000", "f0750", "f1499"} {
			if err := os.Remove(v.Path(name)); err != nil {
				t.Fatal(err)
			}
			delete(want, name)
		}
		mntWriteFile(t, v.Path("late"), nil)
		want["late"] = 0
		check(t)
	})
	t.Run("after-remount", func(t *testing.T) {
		v.Remount(t)
		check(t)
	})
	t.Run("conf-hidden", func(t *testing.T) {
		_, err := os.Lstat(v.Path("kmsfs.conf"))
		mntWantErrno(t, "lstat kmsfs.conf", err, syscall.ENOENT)
		names, err := os.ReadDir(v.Mnt)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(names, func(e os.DirEntry) bool { return e.Name() == "kmsfs.conf" }) {
			t.Fatal("kmsfs.conf listed at the root")
		}
	})
	t.Run("empty-dir", func(t *testing.T) {
		ents, err := os.ReadDir(v.Path("dir"))
		if err != nil || len(ents) != 0 {
			t.Fatalf("empty dir lists %v, %v", ents, err)
		}
	})
}

// TestOpsDeepTree makes a tree whose absolute path is longer than
// PATH_MAX with *at calls, then creates, writes and reads a file at its
// bottom, before and after a remount.
func TestOpsDeepTree(t *testing.T) {
	v := mntOps(t)
	name := strings.Repeat("d", 250)
	descend := func(t *testing.T, create bool) (fd int, depth int) {
		t.Helper()
		fd, err := unix.Open(v.Mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		for depth = 0; len(v.Mnt)+depth*(len(name)+1) <= 2*unix.PathMax; depth++ {
			if create {
				if err := unix.Mkdirat(fd, name, 0o755); err != nil {
					unix.Close(fd)
					t.Fatalf("mkdirat at depth %d: %v", depth, err)
				}
			}
			next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			unix.Close(fd)
			if err != nil {
				t.Fatalf("openat at depth %d: %v", depth, err)
			}
			fd = next
		}
		return fd, depth
	}
	data := mntRandom(40, 5000)
	fd, depth := descend(t, true)
	full := v.Mnt + strings.Repeat("/"+name, depth)
	if len(full) <= unix.PathMax {
		unix.Close(fd)
		t.Fatalf("bad test: path of %d bytes is not beyond PATH_MAX", len(full))
	}
	if _, err := os.Lstat(full + "/f"); err == nil || !strings.Contains(err.Error(), "file name too long") {
		t.Fatalf("lstat of the %d-byte path: %v, want it too long", len(full), err)
	}
	f, err := unix.Openat(fd, "f", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o644)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("create at depth %d (%d bytes): %v", depth, len(full), err)
	}
	_, err = unix.Write(f, data)
	unix.Close(f)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	mntCheckAt(t, fd, "f", data)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, "f", &st, 0); err != nil || st.Size != int64(len(data)) {
		t.Fatalf("fstatat: size %d, %v", st.Size, err)
	}
	if err := unix.Renameat(fd, "f", fd, "g"); err != nil {
		t.Fatalf("renameat deep down: %v", err)
	}
	unix.Close(fd)
	v.Remount(t)
	fd, _ = descend(t, false)
	defer unix.Close(fd)
	mntCheckAt(t, fd, "g", data)
}

// mntCheckAt checks that name in directory dirfd holds want.
func mntCheckAt(t *testing.T, dirfd int, name string, want []byte) {
	t.Helper()
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("openat %s: %v", name, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, len(want)+10)
	n, err := unix.Read(fd, buf)
	if err != nil || string(buf[:n]) != string(want) {
		t.Fatalf("read %s: %s (%v)", name, mntDiff(buf[:n], want), err)
	}
}

package integration_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestMountUnprivileged runs kmsfs as nobody: init, mount through
// fusermount3, write and read as nobody, unmount with `kmsfs unmount`
// (fusermount3 -u), remount and read back. Without --allow-other the
// mount is nobody's alone, root included.
func TestMountUnprivileged(t *testing.T) {
	mntFuseDeviceForAll(t)
	dir := mntSharedDir(t)
	v := mntStart(t, mntOptions{Dir: dir, Cred: mntNobodyCred()})
	h := &mntHelper{bin: mntBuildHelper(t, dir), cred: mntNobodyCred()}

	info, _ := mntMountInfo(t, v.Mnt)
	if i := slices.Index(info, "-"); i < 0 || i+3 >= len(info) || info[i+1] != "fuse.kmsfs" ||
		!strings.Contains(info[i+3], fmt.Sprintf("user_id=%d", mntNobody)) {
		t.Fatalf("mountinfo %q: want a fuse.kmsfs mount of user_id=%d", info, mntNobody)
	}
	// /proc/PID of a non-dumpable daemon belongs to root: ask its status.
	if uid := mntProcUID(t, v.pid); uid != mntNobody {
		t.Fatalf("mount daemon runs as uid %d, want %d", uid, mntNobody)
	}

	files := mntSourceFiles()
	h.must(t, "mkdir", v.path("dir"), "700")
	for name, data := range files {
		h.mustInput(t, data, "create", v.path(name), "600", "-")
	}
	for name, data := range files {
		if got := h.must(t, "read", v.path(name)); got != string(data) {
			t.Fatalf("%s: %s", name, mntDiff([]byte(got), data))
		}
	}
	// Not root's to enter: the kernel allows only the mounting user.
	if _, err := os.Lstat(v.path("dir")); mntErrno(err) != syscall.EACCES {
		t.Fatalf("root stats into nobody's mount: %v, want EACCES", err)
	}

	v.remount(t) // kmsfs unmount as nobody goes through fusermount3 -u
	for name, data := range files {
		if got := h.must(t, "read", v.path(name)); got != string(data) {
			t.Fatalf("%s after remount: %s", name, mntDiff([]byte(got), data))
		}
		if got := h.must(t, "stat", v.path(name)); !strings.HasPrefix(got, fmt.Sprintf("%d %d 100600 ", mntNobody, mntNobody)) {
			t.Fatalf("%s: stat %q, want nobody's 0600 file", name, got)
		}
	}
	v.unmount(t)
	if leaks := mntCipherLeaks(t, v.Cipher, mntMarker(files)); len(leaks) > 0 {
		t.Fatalf("cipher files hold plaintext: %v", leaks)
	}
	for name := range files {
		if st := mntLstat(t, v.Cipher+"/"+name); st.Uid != mntNobody {
			t.Fatalf("cipher file %s belongs to uid %d, want %d", name, st.Uid, mntNobody)
		}
	}
}

// mntFuseDeviceForAll makes /dev/fuse readable and writable by every user
// for the test, as Debian's udev rule does (fusermount3 opens it with the
// caller's rights); containers often leave it 0600. The mode is restored
// when the test ends.
func mntFuseDeviceForAll(t *testing.T) {
	t.Helper()
	const dev = "/dev/fuse"
	fi, err := os.Stat(dev)
	if err != nil {
		t.Fatalf("no FUSE device: %v", err)
	}
	mode := fi.Mode().Perm()
	if mode&0o006 == 0o006 {
		return
	}
	if err := os.Chmod(dev, mode|0o006); err != nil {
		t.Fatalf("%s is %04o and cannot be opened up for ordinary users: %v", dev, mode, err)
	}
	t.Logf("%s was %04o: opened to all users for this test (fusermount3 opens it as the caller)", dev, mode)
	t.Cleanup(func() {
		if err := os.Chmod(dev, mode); err != nil {
			t.Errorf("restore %s to %04o: %v", dev, mode, err)
		}
	})
}

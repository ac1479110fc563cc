package integration_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestMountUnprivileged runs kmsfs as nobody: init, mount through
// fusermount3, write and read as nobody, unmount with `kmsfs unmount`
// (fusermount3 -u), remount and read back. Without --allow-other the
// mount is nobody's alone, root included.
func TestMountUnprivileged(t *testing.T) {
	fusetest.NeedFUSEForUsers(t)
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, Cred: fusetest.NobodyCred()})
	h := suite.User(t, fusetest.NobodyCred())

	info, _ := fusetest.MountInfo(t, v.Mnt)
	if i := slices.Index(info, "-"); i < 0 || i+3 >= len(info) || info[i+1] != "fuse.kmsfs" ||
		!strings.Contains(info[i+3], fmt.Sprintf("user_id=%d", fusetest.Nobody)) {
		t.Fatalf("mountinfo %q: want a fuse.kmsfs mount of user_id=%d", info, fusetest.Nobody)
	}
	// /proc/PID of a non-dumpable daemon belongs to root: ask its status.
	if uid := fusetest.ProcUID(t, v.PID()); uid != fusetest.Nobody {
		t.Fatalf("mount daemon runs as uid %d, want %d", uid, fusetest.Nobody)
	}

	files := mntSourceFiles()
	h.Must(t, "mkdir", v.Path("dir"), "700")
	for name, data := range files {
		h.MustInput(t, data, "create", v.Path(name), "600", "-")
	}
	for name, data := range files {
		if got := h.Must(t, "read", v.Path(name)); got != string(data) {
			t.Fatalf("%s: %s", name, mntDiff([]byte(got), data))
		}
	}
	// Not root's to enter: the kernel allows only the mounting user.
	if _, err := os.Lstat(v.Path("dir")); mntErrno(err) != syscall.EACCES {
		t.Fatalf("root stats into nobody's mount: %v, want EACCES", err)
	}

	v.Remount(t) // kmsfs unmount as nobody goes through fusermount3 -u
	for name, data := range files {
		if got := h.Must(t, "read", v.Path(name)); got != string(data) {
			t.Fatalf("%s after remount: %s", name, mntDiff([]byte(got), data))
		}
		if got := h.Must(t, "stat", v.Path(name)); !strings.HasPrefix(got, fmt.Sprintf("%d %d 100600 ", fusetest.Nobody, fusetest.Nobody)) {
			t.Fatalf("%s: stat %q, want nobody's 0600 file", name, got)
		}
	}
	v.Unmount(t)
	if leaks := mntCipherLeaks(t, v.Cipher, mntMarker(files)); len(leaks) > 0 {
		t.Fatalf("cipher files hold plaintext: %v", leaks)
	}
	// Every entry of the cipher dir is nobody's: the cipher files (whose
	// names may be encrypted, and the mount is not root's to ask which
	// they are), directories, kmsfs.conf and, with encrypted names,
	// kmsfs.names and the directories' ID links.
	regular := 0
	err := filepath.WalkDir(v.Cipher, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			regular++
		}
		if st := mntLstat(t, p); st.Uid != fusetest.Nobody {
			t.Errorf("%s in the cipher dir belongs to uid %d, want %d", p, st.Uid, fusetest.Nobody)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if regular <= len(files) { // kmsfs.conf, and a cipher file per file
		t.Fatalf("the cipher dir holds %d regular files, want more than the %d files written", regular, len(files))
	}
}

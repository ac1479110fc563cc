package fs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/procfd"
)

// getdents lists dir with getdents(2) through a buffer of bufSize bytes,
// stopping after calls calls (0: at the end), and returns the names
// without "." and "..".
func getdents(t *testing.T, dir string, bufSize, calls int) []string {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer unix.Close(fd)
	buf := make([]byte, bufSize)
	var names []string
	for i := 0; calls == 0 || i < calls; i++ {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Errorf("getdents %s: %v", dir, err)
			return nil
		}
		if n == 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	return names
}

// inBothDirModes runs test with OPENDIR declined where the host's
// filesystem allows it (see stableDirOffsets), and with OPENDIR forced.
func inBothDirModes(t *testing.T, test func(t *testing.T)) {
	for _, opendir := range []bool{false, true} {
		t.Run(fmt.Sprintf("forced-opendir=%v", opendir), func(t *testing.T) {
			kfs.ForceOpendir(t, opendir)
			test(t)
		})
	}
}

// inBothDirAndNameModes runs test in both of inBothDirModes' modes, each
// with names in the clear and encrypted (withNames), given the mount
// options of each.
func inBothDirAndNameModes(t *testing.T, test func(t *testing.T, o kfs.Options)) {
	inBothDirModes(t, func(t *testing.T) {
		for _, encrypted := range []bool{false, true} {
			t.Run(fmt.Sprintf("encrypted-names=%v", encrypted), func(t *testing.T) {
				o := kfs.Options{Xattr: true}
				if encrypted {
					o = withNames(t, o)
				}
				test(t, o)
			})
		}
	})
}

// TestListingsConcurrent: without OPENDIR, concurrent listings of one
// directory, each through a getdents buffer of its own size (the kernel
// sizes READDIRPLUS replies by it), each get every name exactly once, in
// listings of many requests, right after a change through the mount
// dropped the kernel's cached listing; and so does a listing afterwards.
// (Listings sharing a handle lost names when the bridge replayed a reply
// of another listing that did not fit; a handle kept from before a change
// lost the new name.)
func TestListingsConcurrent(t *testing.T) {
	inBothDirAndNameModes(t, testListingsConcurrent)
}

func testListingsConcurrent(t *testing.T, o kfs.Options) {
	m := fusetest.MountFS(t, 4096, o)
	dir := filepath.Join(m.Dir, "big")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 3000 {
		name := fmt.Sprintf("entry-%04d-%s", i, strings.Repeat("x", 40))
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	check := func(round int, who string, got []string) {
		t.Helper()
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		var missing, twice []string
		for i, g := range got {
			if i > 0 && got[i-1] == g {
				twice = append(twice, g)
			}
		}
		for _, w := range want {
			if _, ok := slices.BinarySearch(got, w); !ok {
				missing = append(missing, w)
			}
		}
		t.Errorf("round %d, %s: %d names, want %d; missing %d %q, twice %d %q",
			round, who, len(got), len(want), len(missing), missing[:min(3, len(missing))], len(twice), twice[:min(3, len(twice))])
	}
	for round := range 40 {
		// A change through the mount drops the cached listing, so the
		// listings below go to the daemon.
		name := fmt.Sprintf("round-%d", round)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
		slices.Sort(want)
		var wg sync.WaitGroup
		for _, size := range []int{4 << 10, 8 << 10, 32 << 10, 64 << 10} {
			wg.Go(func() { check(round, fmt.Sprintf("lister with a %d-byte buffer", size), getdents(t, dir, size, 0)) })
		}
		wg.Wait()
		check(round, "lister alone afterwards", getdents(t, dir, 64<<10, 0))
		if t.Failed() {
			break
		}
	}
}

// TestListingWhileRemoving: a process that lists a directory and removes
// each name it read before reading on (a streaming cleaner) removes every
// name, with or without OPENDIR. (Without OPENDIR each removal drops the
// listing's handle and the next request seeks a fresh one, which is right
// only over stable directory offsets; stableDirOffsets keeps OPENDIR
// elsewhere.)
func TestListingWhileRemoving(t *testing.T) {
	inBothDirAndNameModes(t, func(t *testing.T, o kfs.Options) {
		m := fusetest.MountFS(t, 4096, o)
		dir := filepath.Join(m.Dir, "many")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range 1500 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f-%04d-%s", i, strings.Repeat("y", 30))), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		buf := make([]byte, 4096)
		removed := 0
		for {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			_, _, names := unix.ParseDirent(buf[:n], -1, nil)
			for _, name := range names {
				if err := unix.Unlinkat(fd, name, 0); err != nil {
					t.Fatalf("unlink %s: %v", name, err)
				}
				removed++
			}
		}
		left, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if removed != 1500 || len(left) != 0 {
			t.Errorf("the listing removed %d names, %d left: %v", removed, len(left), left[:min(3, len(left))])
		}
	})
}

// TestStableDirOffsets: listings declines OPENDIR over tmpfs (Linux 6.6
// and later), not over overlayfs, whose merged directories
// number entries by position.
func TestStableDirOffsets(t *testing.T) {
	base := t.TempDir()
	tmpfs, ovl := filepath.Join(base, "tmpfs"), filepath.Join(base, "ovl")
	for _, d := range []string{tmpfs, ovl, base + "/lower", base + "/upper", base + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	if err := unix.Mount("overlay", ovl, "overlay", 0, "lowerdir="+base+"/lower,upperdir="+base+"/upper,workdir="+base+"/work"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(ovl, unix.MNT_DETACH) })
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dir  string
		want bool
	}{
		{tmpfs, kfs.ReleaseAtLeast(unix.ByteSliceToString(u.Release[:]), 6, 6)},
		{ovl, false},
	} {
		got, err := kfs.StableDirOffsets(c.dir)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s: stable directory offsets %v, want %v", c.dir, got, c.want)
		}
	}
}

func TestReleaseAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"6.18.44-fc-v782", true},
		{"6.6.0", true},
		{"6.6", true},
		{"6.5.13-amd64", false},
		{"5.19.0", false},
		{"7.0-rc1", true},
		{"10.1", true},
		{"garbage", false},
		{"", false},
	} {
		if got := kfs.ReleaseAtLeast(c.release, 6, 6); got != c.want {
			t.Errorf("release %q at least 6.6: %v, want %v", c.release, got, c.want)
		}
	}
}

// TestListingsAbandoned: listings read part-way and closed leave at most
// kfs.MaxListings directory streams open in the daemon, every directory
// still lists in full afterwards, and unmounting closes the rest (the
// kernel forgets every directory then; OnUnmount releases what is left).
func TestListingsAbandoned(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	const dirs = 3 * kfs.MaxListings
	dirOf := func(d int) string { return filepath.Join(m.Dir, fmt.Sprintf("d%03d", d)) }
	for d := range dirs {
		dir := dirOf(d)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%02d-%s", i, strings.Repeat("y", 30))), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for d := range dirs {
		dir := dirOf(d)
		if got := getdents(t, dir, 512, 1); len(got) == 0 || len(got) >= 40 {
			t.Fatalf("%s: a 512-byte getdents gave %d of 40 names", dir, len(got))
		}
	}
	// The daemon is this process: a directory with two descriptors open
	// into it has a listing stream besides the node's own.
	perDir := map[string]int{}
	for _, d := range procfd.Under(t, m.Cipher) {
		perDir[d.Target]++
	}
	streams := 0
	for _, n := range perDir {
		if n > 1 {
			streams++
		}
	}
	if streams > kfs.MaxListings {
		t.Errorf("%d directories hold a listing stream after %d abandoned listings, want at most %d", streams, dirs, kfs.MaxListings)
	}
	for d := range dirs {
		dir := dirOf(d)
		if got := getdents(t, dir, 4096, 0); len(got) != 40 {
			t.Fatalf("%s lists %d names after an abandoned listing, want 40", dir, len(got))
		}
	}
	for d := range dirs {
		getdents(t, dirOf(d), 512, 1)
	}
	m.Unmount()
	// Unmount closed the mount's journal too: nothing may be left.
	open := procfd.Under(t, m.Cipher)
	if len(open) > 0 {
		t.Errorf("after unmount %d descriptors into the cipher dir are open: %v", len(open), open)
	}
}

// TestOpenDirRemoved: the kernel opens directories without telling the
// daemon, yet a directory held open stays usable after it is removed or
// renamed over, as on a local filesystem: fstat and fsync work.
func TestOpenDirRemoved(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	for _, how := range []string{"rmdir", "renamed-over"} {
		t.Run(how, func(t *testing.T) {
			dir := filepath.Join(m.Dir, how)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			var before unix.Stat_t
			if err := unix.Fstat(fd, &before); err != nil {
				t.Fatal(err)
			}
			switch how {
			case "rmdir":
				err = unix.Rmdir(dir)
			case "renamed-over":
				other := dir + ".new"
				if err := os.Mkdir(other, 0o755); err != nil {
					t.Fatal(err)
				}
				err = unix.Rename(other, dir)
			}
			if err != nil {
				t.Fatal(err)
			}
			var after unix.Stat_t
			if err := unix.Fstat(fd, &after); err != nil {
				t.Fatalf("fstat of the open directory after %s: %v", how, err)
			}
			if after.Ino != before.Ino {
				t.Fatalf("fstat after %s: inode %d, was %d", how, after.Ino, before.Ino)
			}
			// Listing it fails as on a local filesystem (the kernel's
			// answer for a removed directory), not with another error.
			if _, err := unix.Getdents(fd, make([]byte, 4096)); err != unix.ENOENT {
				t.Fatalf("listing the open directory after %s: %v, want ENOENT", how, err)
			}
			if err := unix.Fsync(fd); err != nil {
				t.Fatalf("fsync of the open directory after %s: %v", how, err)
			}
		})
	}
}

// TestOpenDirRenamed: a process lists a directory it holds open while the
// directory is renamed, or exchanged with a sibling (RENAME_EXCHANGE). The
// listing, whenever it lands, is of that directory, and a file created
// under its new name lands in it. The directories are made in the cipher
// dir, so that the daemon holds no descriptor for them until it has to:
// one opened by name after the rename and before go-fuse moved the node
// was the other directory, or none.
func TestOpenDirRenamed(t *testing.T) {
	inBothDirModes(t, testOpenDirRenamed)
}

func testOpenDirRenamed(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	for _, how := range []string{"rename", "exchange"} {
		t.Run(how, func(t *testing.T) {
			wrong := 0
			for i := range 2000 {
				a, b := fmt.Sprintf("%s-a%d", how, i), fmt.Sprintf("%s-b%d", how, i)
				for _, d := range []string{a, b} {
					if d == b && how == "rename" {
						break
					}
					if err := os.Mkdir(filepath.Join(m.Cipher, d), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(m.Cipher, d, "in-"+d), nil, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				fd, err := unix.Open(filepath.Join(m.Dir, a), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				flags := uint(0)
				if how == "exchange" {
					flags = unix.RENAME_EXCHANGE
				}
				var names []string
				var lerr error
				var wg sync.WaitGroup
				start := make(chan struct{})
				wg.Go(func() {
					<-start
					if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(m.Dir, a), unix.AT_FDCWD, filepath.Join(m.Dir, b), flags); err != nil {
						t.Error(err)
					}
				})
				wg.Go(func() {
					buf := make([]byte, 4096)
					<-start
					n, err := unix.Getdents(fd, buf)
					if err != nil {
						lerr = err
						return
					}
					_, _, names = unix.ParseDirent(buf[:n], -1, nil)
				})
				close(start)
				wg.Wait()
				unix.Close(fd)
				if lerr != nil || !slices.Contains(names, "in-"+a) {
					wrong++
					if wrong <= 3 {
						t.Errorf("round %d: listing the open directory %s during its %s: %v, %v", i, a, how, names, lerr)
					}
					continue
				}
				if err := os.WriteFile(filepath.Join(m.Dir, b, "new"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(m.Cipher, b, "new")); err != nil {
					t.Fatalf("round %d: a file created in %s after the %s: %v", i, b, how, err)
				}
			}
		})
	}
}

// TestListingsRoot: the root's listing hides kmsfs's own entries yet
// keeps the cipher dir's offsets, so a listing that starts after an
// abandoned one (whose handle the daemon keeps) sees the directory as it
// is now: a name created in between shows, a removed one does not.
func TestListingsRoot(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	want := map[string]bool{}
	for i := range 200 {
		name := fmt.Sprintf("root-%03d-%s", i, strings.Repeat("z", 30))
		if err := os.WriteFile(filepath.Join(m.Dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = true
	}
	for round := range 3 {
		if got := getdents(t, m.Dir, 512, 1); len(got) == 0 || len(got) >= len(want) {
			t.Fatalf("round %d: a 512-byte getdents gave %d of %d names", round, len(got), len(want))
		}
		late := fmt.Sprintf("late-%d", round)
		if err := os.WriteFile(filepath.Join(m.Dir, late), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want[late] = true
		gone := fmt.Sprintf("root-%03d-%s", round, strings.Repeat("z", 30))
		if err := os.Remove(filepath.Join(m.Dir, gone)); err != nil {
			t.Fatal(err)
		}
		delete(want, gone)
		got := getdents(t, m.Dir, 4096, 0)
		seen := map[string]bool{}
		for _, name := range got {
			if !want[name] || seen[name] {
				t.Fatalf("round %d: listed %q (hidden, removed or twice)", round, name)
			}
			seen[name] = true
		}
		if len(seen) != len(want) {
			t.Fatalf("round %d: listed %d names, want %d", round, len(seen), len(want))
		}
	}
}

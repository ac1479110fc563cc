package fs_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// fdIno returns the inode number the kernel holds fd open on, from
// /proc/self/fdinfo: the inode the kernel resolved the path to, whatever
// the filesystem answers later.
func fdIno(fd int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "ino:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no ino in fdinfo %d: %q", fd, b)
}

// mustFdIno is fdIno for the test's own goroutine.
func mustFdIno(t *testing.T, fd int) uint64 {
	t.Helper()
	ino, err := fdIno(fd)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// opened is what one open racing a rename saw.
type opened struct {
	ino  uint64 // the inode the kernel opened
	size int64  // stat's size
	got  []byte // what it read
	oerr error  // of the open
	rerr error  // of the read
}

// TestOpenFileRenamed: a file opened while a rename or an exchange moves
// it is that file (renames.go). An open must not find whatever the old
// name names by then: a reader would get the other file's plaintext under
// this file's inode ("exchange"), a truncate through the new descriptor
// would empty the other file ("exchange-ftruncate"), and a stat must not
// give the other file's size ("exchange-stat"). (An O_TRUNC open does not
// race: the kernel truncates after the open, with the file locked against
// renames.) Three opens (stats) race each rename. Without renames' gate
// and without checkSelf, in 1,500 rounds 13-16 reads got the other file,
// 2-4 truncates emptied it and about 20 stats gave its size. With only
// checkSelf's ESTALE those went, but the lookups that the kernel's retries
// sent into the window left go-fuse's tree wrong, and a later chmod
// changed the other file (3-6 in 1,500 rounds; afterExchange checks it).
func TestOpenFileRenamed(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	for _, how := range []string{"rename", "exchange", "exchange-ftruncate", "exchange-stat"} {
		t.Run(how, func(t *testing.T) {
			trunc := how == "exchange-ftruncate"
			openFlags, renameFlags := unix.O_RDONLY, uint(unix.RENAME_EXCHANGE)
			if trunc {
				openFlags = unix.O_RDWR
			}
			if how == "rename" {
				renameFlags = 0
			}
			rounds := 1500
			if trunc {
				rounds = 3000 // it hits the window less often
			}
			wrong := 0
			for i := range rounds {
				a, b := filepath.Join(m.Dir, fmt.Sprintf("%s-a%d", how, i)), filepath.Join(m.Dir, fmt.Sprintf("%s-b%d", how, i))
				content := map[uint64][]byte{}
				for k, p := range []string{a, b} {
					if p == b && how == "rename" {
						break
					}
					want := bytes.Repeat([]byte{"ab"[k]}, 4096*(k+1))
					if err := os.WriteFile(p, want, 0o644); err != nil {
						t.Fatal(err)
					}
					// Drop the written pages, so that a read asks kmsfs.
					fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
					if err != nil {
						t.Fatal(err)
					}
					if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
						t.Fatal(err)
					}
					content[mustFdIno(t, fd)] = want
					unix.Close(fd)
				}
				var (
					res [3]opened
					wg  sync.WaitGroup
				)
				start := make(chan struct{})
				wg.Go(func() {
					<-start
					if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, renameFlags); err != nil {
						t.Error(err)
					}
				})
				for k := range res {
					r := &res[k]
					wg.Go(func() {
						<-start
						if how == "exchange-stat" {
							var stx unix.Statx_t
							r.oerr = unix.Statx(unix.AT_FDCWD, a, unix.AT_STATX_FORCE_SYNC, unix.STATX_INO|unix.STATX_SIZE, &stx)
							r.ino, r.size = stx.Ino, int64(stx.Size)
							return
						}
						fd, err := unix.Open(a, openFlags|unix.O_CLOEXEC, 0)
						if err != nil {
							r.oerr = err
							return
						}
						defer unix.Close(fd)
						if r.ino, r.rerr = fdIno(fd); r.rerr != nil {
							return
						}
						if trunc {
							r.rerr = unix.Ftruncate(fd, 0)
							return
						}
						got := make([]byte, 8192)
						n, err := unix.Pread(fd, got, 0)
						r.got, r.rerr = got[:max(n, 0)], err
					})
				}
				close(start)
				wg.Wait()
				var bad []string
				for _, r := range res {
					switch {
					case r.oerr == unix.ENOENT && how == "rename":
						// opened after the rename: a is gone
					case r.oerr != nil || r.rerr != nil:
						bad = append(bad, fmt.Sprintf("open %v, read %v", r.oerr, r.rerr))
					case how == "exchange-stat":
						if r.size != int64(len(content[r.ino])) {
							bad = append(bad, fmt.Sprintf("inode %d stats %d bytes", r.ino, r.size))
						}
					case !trunc && !bytes.Equal(r.got, content[r.ino]):
						bad = append(bad, fmt.Sprintf("inode %d read %d bytes %.1q…", r.ino, len(r.got), r.got[:min(len(r.got), 1)]))
					}
				}
				if trunc {
					// Each inode an open truncated is empty; the other
					// keeps its content.
					cut := map[uint64]bool{}
					for _, r := range res {
						cut[r.ino] = true
					}
					for _, p := range []string{a, b} {
						fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
						if err != nil {
							t.Fatal(err)
						}
						ino := mustFdIno(t, fd)
						got := make([]byte, 8192)
						n, err := unix.Pread(fd, got, 0)
						unix.Close(fd)
						if err != nil {
							t.Fatal(err)
						}
						if want := content[ino]; (cut[ino] && n != 0) || (!cut[ino] && !bytes.Equal(got[:n], want)) {
							bad = append(bad, fmt.Sprintf("inode %d (truncated by an open: %v) has %d bytes", ino, cut[ino], n))
						}
					}
				}
				if how != "rename" {
					bad = append(bad, afterExchange(t, m.Cipher, a, b)...)
				}
				wrong += len(bad)
				if len(bad) > 0 && wrong <= 3 {
					t.Errorf("round %d: opens of %s during its %s: %s", i, filepath.Base(a), how, strings.Join(bad, "; "))
				}
			}
			if wrong > 0 {
				t.Errorf("%d wrong in %d rounds", wrong, rounds)
			}
		})
	}
}

// afterExchange checks that the mount knows where a and b went after
// their exchange: a chmod of b changes b's cipher file only (the one
// named a in the cipher dir before), and a stat through an O_PATH
// descriptor, which the kernel does not retry, does not fail with ESTALE.
// A LOOKUP let into the rename's window left go-fuse's tree with a's old
// node under the name a.
func afterExchange(t *testing.T, cipher, a, b string) (bad []string) {
	t.Helper()
	if err := unix.Chmod(b, 0o600); err != nil {
		return []string{fmt.Sprintf("chmod of %s: %v", filepath.Base(b), err)}
	}
	for p, want := range map[string]uint32{a: 0o644, b: 0o600} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(cipher, filepath.Base(p)), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o777 != want {
			bad = append(bad, fmt.Sprintf("after chmod of %s, cipher file %s has mode %o", filepath.Base(b), filepath.Base(p), st.Mode&0o777))
		}
	}
	fd, err := unix.Open(b, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return append(bad, fmt.Sprintf("open of %s: %v", filepath.Base(b), err))
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &stx); err != nil {
		bad = append(bad, fmt.Sprintf("stat of an O_PATH descriptor of %s: %v", filepath.Base(b), err))
	}
	return bad
}

// TestCipherFileReplacedBehind: a cipher file replaced behind the mount
// while the kernel still caches its name is read as the new file, under
// the new file's inode. The node's by-name open finds another object and
// answers ESTALE (checkSelf); the kernel looks the name up again and opens
// the new node. Without the check the old node would read the new file's
// plaintext, and a stat would give the new file's size for the old inode.
func TestCipherFileReplacedBehind(t *testing.T) {
	m := fusetest.MountFS(t, 4096, kfs.Options{Xattr: true})
	x, y := filepath.Join(m.Dir, "x"), filepath.Join(m.Dir, "y")
	if err := os.WriteFile(x, bytes.Repeat([]byte{'x'}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{'y'}, 8192)
	if err := os.WriteFile(y, want, 0o644); err != nil {
		t.Fatal(err)
	}
	var old unix.Stat_t
	if err := unix.Stat(x, &old); err != nil { // the kernel now caches x
		t.Fatal(err)
	}
	// The kernel sends RELEASE after close returns: wait (bounded) until
	// the daemon, in this process, holds x's cipher file no more, or its
	// attributes come from that descriptor.
	waitUnheld(t, filepath.Join(m.Cipher, "x"))
	if err := os.Rename(filepath.Join(m.Cipher, "y"), filepath.Join(m.Cipher, "x")); err != nil {
		t.Fatal(err)
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, x, unix.AT_STATX_FORCE_SYNC, unix.STATX_INO|unix.STATX_SIZE, &stx); err != nil {
		t.Fatal(err)
	}
	if stx.Ino == old.Ino || stx.Size != uint64(len(want)) {
		t.Errorf("stat of x after the replacement: inode %d (before %d), %d bytes, want a new inode of %d bytes", stx.Ino, old.Ino, stx.Size, len(want))
	}
	fd, err := unix.Open(x, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := make([]byte, 3*4096)
	n, err := unix.Pread(fd, got, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ino := mustFdIno(t, fd); ino == old.Ino || !bytes.Equal(got[:n], want) {
		t.Errorf("x after the replacement: inode %d (before %d) reads %d bytes %.1q…", ino, old.Ino, n, got[:min(n, 1)])
	}
}

// waitUnheld waits up to 10 s until no descriptor of this process names
// path.
func waitUnheld(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		held := false
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == path {
				held = true
			}
		}
		if !held {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still held open by the daemon after 10 s", path)
		}
		time.Sleep(time.Millisecond)
	}
}

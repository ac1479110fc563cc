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

	"golang.org/x/sys/unix"
)

// fdIno returns the inode number the kernel holds fd open on, from
// /proc/self/fdinfo: the inode the kernel resolved the path to, whatever
// the filesystem answers later.
func fdIno(t *testing.T, fd int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "ino:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no ino in fdinfo %d: %q", fd, b)
	return 0
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
// it is that file. kmsfs opens a file's cipher file by its parent and
// name; an OPEN that comes between the rename and go-fuse moving the node
// must not open whatever the old name names by then (in an exchange, the
// other file): a reader would get the other file's plaintext under this
// file's inode ("exchange"), and a truncate through the new descriptor
// would empty the other file ("exchange-ftruncate"); a stat must not give
// the other file's size ("exchange-stat"). (An O_TRUNC open does
// not race: the kernel truncates after the open, with the file locked
// against renames.) Three opens (stats) race each rename. Without the
// check (checkSelf), in 1,500 rounds 13-33 reads got the other file, 2-4
// truncates emptied it and about 20 stats gave its size.
func TestOpenFileRenamed(t *testing.T) {
	m := mount(t, 4096)
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
				a, b := filepath.Join(m.mnt, fmt.Sprintf("%s-a%d", how, i)), filepath.Join(m.mnt, fmt.Sprintf("%s-b%d", how, i))
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
					content[fdIno(t, fd)] = want
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
						r.ino = fdIno(t, fd)
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
						ino := fdIno(t, fd)
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

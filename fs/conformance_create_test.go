package fs_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// The TestConformance* tests mirror pjdfstest cases (tests/<syscall>/NN.t)
// that a FUSE passthrough running as root is likely to get wrong: who owns
// what it creates, set-ID bits, timestamps, permission rules the kernel
// leaves to the filesystem, link counts and error codes. Each case names
// the pjdfstest file it follows. They run as root against a mount with
// default_permissions and allow_other, as pjdfstest is run.

// allTypes are pjdfstest's file types; nonSymlinkTypes are those but the
// symlink.
var (
	nonSymlinkTypes = []string{"regular", "dir", "fifo", "block", "char", "socket"}
	allTypes        = append(slices.Clip(nonSymlinkTypes), "symlink")
)

// createOp returns the operation by which a user makes an object of a
// type: open(O_CREAT), mkdir, mkfifo, mknod, bind, symlink.
func createOp(typ, path, mode string) []string {
	switch typ {
	case "regular":
		return []string{"open", path, "O_CREAT,O_WRONLY", mode}
	case "dir":
		return []string{"mkdir", path, mode}
	case "fifo":
		return []string{"mkfifo", path, mode}
	case "mknod-fifo":
		return []string{"mknod", path, "f", mode, "0", "0"}
	case "block":
		return []string{"mknod", path, "b", mode, "1", "2"}
	case "char":
		return []string{"mknod", path, "c", mode, "1", "2"}
	case "socket":
		return []string{"bind", path}
	case "symlink":
		return []string{"symlink", "test", path}
	}
	panic(typ)
}

// TestConformanceCreateMode: open/00.t, mkdir/00.t, mkfifo/00.t,
// mknod/00.t — the new object's mode is the requested mode less the umask.
func TestConformanceCreateMode(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c := newConf(t, o)
		d := c.dir(t)
		for _, typ := range []string{"regular", "dir", "fifo", "mknod-fifo"} {
			stype := map[string]string{"regular": "regular", "dir": "dir", "fifo": "fifo", "mknod-fifo": "fifo"}[typ]
			for _, tc := range []struct {
				mode  string
				umask int
				want  string
			}{
				{"0755", 0, "0755"},
				{"0151", 0, "0151"},
				{"0151", 0o077, "0100"},
				{"0345", 0o070, "0305"},
				{"0345", 0o501, "0244"},
			} {
				t.Run(fmt.Sprintf("type=%s,mode=%s,umask=%03o", typ, tc.mode, tc.umask), func(t *testing.T) {
					n0 := filepath.Join(d, "n0")
					c.expectIn(t, "0", nil, tc.umask, "", createOp(typ, n0, tc.mode)...)
					c.expect(t, stype+","+tc.want, nil, "lstat", n0, "type,mode")
					c.remove(t, typ, n0)
				})
			}
		}
	})
}

// TestConformanceCreateSetID: a new file keeps the set-user-ID and
// set-group-ID bits it was created with, as on a local filesystem (Linux
// ext4/tmpfs keep them; chown(2) by root clears them on non-directories, so
// a daemon that creates as root and then chowns to the caller loses them).
// pjdfstest chmod/12.t creates 04777/02777/06777 files this way; the mode
// before its write is checked here.
func TestConformanceCreateSetID(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c := newConf(t, o)
		d := c.dirOwned(t, "65534", "65534")
		for _, tc := range []struct {
			typ, mode string
			who       *cred
		}{
			{"regular", "04777", nil},
			{"regular", "02777", nil},
			{"regular", "06777", nil},
			{"regular", "04755", nobody},
			{"regular", "02755", nobody},
			{"fifo", "04755", nil},
			{"dir", "01755", nobody}, // mkdir(2) takes no set-ID bits from mode
		} {
			t.Run(fmt.Sprintf("type=%s,mode=%s,%s", tc.typ, tc.mode, strings.ReplaceAll(tc.who.String(), " ", "")), func(t *testing.T) {
				n0 := filepath.Join(d, "n0")
				c.expect(t, "0", tc.who, createOp(tc.typ, n0, tc.mode)...)
				c.expect(t, tc.mode, nil, "lstat", n0, "mode")
				c.remove(t, tc.typ, n0)
			})
		}
	})
}

// TestConformanceCreateOwner: open/00.t, mkdir/00.t, mkfifo/00.t,
// mknod/00.t — a new object belongs to the caller's effective user, and to
// its effective group or the directory's group; in a set-group-ID directory
// to the directory's group (and a new directory inherits the bit). Where
// the directory is not set-group-ID kmsfs gives exactly the caller's group,
// so that is checked too.
func TestConformanceCreateOwner(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c := newConf(t, o)
		for _, typ := range []string{"regular", "dir", "fifo", "mknod-fifo", "socket", "symlink"} {
			t.Run("type="+typ, func(t *testing.T) {
				d := c.dirOwned(t, "65535", "65535")
				n0 := filepath.Join(d, "n0")
				for _, tc := range []struct {
					who        *cred
					pjd, exact string
				}{
					{user(65535, 65535), "65535,65535", "65535,65535"},
					{user(65535, 65534), "65535,6553[45]", "65535,65534"},
				} {
					c.expect(t, "0", tc.who, createOp(typ, n0, "0755")...)
					c.expect(t, tc.pjd, nil, "lstat", n0, "uid,gid")
					c.expect(t, tc.exact, nil, "lstat", n0, "uid,gid")
					c.remove(t, typ, n0)
				}
				c.mustRun(t, "chmod", d, "0777")
				c.expect(t, "0", user(65534, 65533), createOp(typ, n0, "0755")...)
				c.expect(t, "65534,6553[35]", nil, "lstat", n0, "uid,gid")
				c.expect(t, "65534,65533", nil, "lstat", n0, "uid,gid")
				c.remove(t, typ, n0)

				// Set-group-ID directory of group 65531, caller not a member.
				d = c.dirOwned(t, "0", "65531")
				n0 = filepath.Join(d, "n0")
				c.mustRun(t, "chmod", d, "02777")
				c.expect(t, "0", nobody, createOp(typ, n0, "0755")...)
				c.expect(t, "65534,65531", nil, "lstat", n0, "uid,gid")
				if typ == "dir" {
					c.expect(t, "02755", nil, "lstat", n0, "mode")
				}
				c.remove(t, typ, n0)
			})
		}
	})
}

// TestConformanceCreateTimes: open/00.t, mkdir/00.t, mkfifo/00.t,
// mknod/00.t, mknod/11.t, symlink/00.t — creation marks the new object's
// times and the parent's ctime and mtime; opening an existing file with
// O_CREAT changes neither.
func TestConformanceCreateTimes(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c := newConf(t, o)
		d := c.dir(t)
		for _, typ := range allTypes {
			t.Run("type="+typ, func(t *testing.T) {
				n0 := filepath.Join(d, "n0")
				c.setPast(t, d)
				before := c.lstat(t, d)
				c.expect(t, "0", nil, createOp(typ, n0, "0755")...)
				st := c.lstat(t, n0)
				after := c.lstat(t, d)
				if nsec(after.Mtim) <= pastSec*1e9 || nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("parent mtime %v ctime %v -> %v: not updated", after.Mtim, before.Ctim, after.Ctim)
				}
				for name, ts := range map[string]unix.Timespec{"atime": st.Atim, "mtime": st.Mtim, "ctime": st.Ctim} {
					if nsec(ts) < nsec(before.Ctim) {
						t.Errorf("new %s %v before the parent's ctime %v", name, ts, before.Ctim)
					}
				}
				c.remove(t, typ, n0)
			})
		}
		t.Run("existing", func(t *testing.T) {
			n0 := filepath.Join(d, "n0")
			c.mustRun(t, "create", n0, "0644")
			c.setPast(t, d)
			before := c.lstat(t, d)
			c.expect(t, "0", nil, "open", n0, "O_CREAT,O_RDONLY", "0644")
			after := c.lstat(t, d)
			if after.Mtim != before.Mtim || after.Ctim != before.Ctim {
				t.Errorf("parent times changed by opening an existing file: %v %v -> %v %v", before.Mtim, before.Ctim, after.Mtim, after.Ctim)
			}
			c.mustRun(t, "unlink", n0)
		})
	})
}

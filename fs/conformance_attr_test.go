package fs_test

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// TestConformanceChmod: chmod/00.t, chmod/11.t, chmod/12.t.
func TestConformanceChmod(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, _, n0, n1, _ := newConfDir(t, o)
		for _, typ := range nonSymlinkTypes {
			t.Run("type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0)
				c.expect(t, "0", nil, "chmod", n0, "0111")
				c.expect(t, "0111", nil, "stat", n0, "mode")
				// Through a symlink: the target changes, the link does not.
				c.mustRun(t, "symlink", n0, n1)
				lmode := c.run(t, nil, "lstat", n1, "mode")
				c.expect(t, "0", nil, "chmod", n1, "0222")
				c.expect(t, "0222", nil, "stat", n1, "mode")
				c.expect(t, "0222", nil, "stat", n0, "mode")
				c.expect(t, lmode, nil, "lstat", n1, "mode")
				c.mustRun(t, "unlink", n1)

				// Successful chmod updates ctime; a refused one does not.
				before := c.lstat(t, n0)
				c.expect(t, "0", nil, "chmod", n0, "0755")
				if after := c.lstat(t, n0); nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("chmod: ctime %v -> %v", before.Ctim, after.Ctim)
				}
				before = c.lstat(t, n0)
				c.expect(t, "EPERM", nobody, "chmod", n0, "0111")
				if after := c.lstat(t, n0); after.Ctim != before.Ctim {
					t.Errorf("refused chmod: ctime %v -> %v", before.Ctim, after.Ctim)
				}

				// chmod/11.t: the sticky bit, by root and by a non-root owner.
				c.expect(t, "0", nil, "chmod", n0, "01621")
				c.expect(t, "01621", nil, "stat", n0, "mode")
				c.remove(t, typ, n0)
				c.createFile(t, typ, n0, "0640", "65534", "65534")
				c.expect(t, "0", nobody, "chmod", n0, "01644")
				c.expect(t, "01644", nil, "stat", n0, "mode")
				c.remove(t, typ, n0)
			})
		}
		// chmod/00.t: set-group-ID is dropped when the owner is not in the
		// file's group.
		t.Run("sgid-nonmember", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0755")
			c.mustRun(t, "chown", n0, "65534", "65534")
			c.expect(t, "0", nobody, "chmod", n0, "02755")
			c.expect(t, "02755", nil, "stat", n0, "mode")
			c.expect(t, "0", nobody, "chmod", n0, "0755")
			c.expect(t, "0755", nil, "stat", n0, "mode")
			c.expect(t, "0", user(65534, 65533), "chmod", n0, "02755")
			c.expect(t, "0755", nil, "stat", n0, "mode")
			c.mustRun(t, "unlink", n0)
		})
		// chmod/12.t: a write by someone other than the owner clears
		// set-user-ID and set-group-ID. The bits are set with chmod here, so
		// that the case does not depend on creation keeping them.
		for _, tc := range []struct{ mode, flags string }{
			{"04777", "O_WRONLY"}, {"02777", "O_RDWR"}, {"06777", "O_RDWR"},
		} {
			t.Run("write-clears-"+tc.mode, func(t *testing.T) {
				c.mustRun(t, "create", n0, "0644")
				c.mustRun(t, "chmod", n0, tc.mode)
				c.expect(t, tc.mode, nil, "stat", n0, "mode")
				c.expect(t, "0777", nobody, "open", n0, tc.flags, ":", "write", "0", "x", ":", "fstat", "0", "mode")
				c.expect(t, "0777", nil, "stat", n0, "mode")
				c.mustRun(t, "unlink", n0)
			})
		}
	})
}

// TestConformanceChown: chown/00.t.
func TestConformanceChown(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, _, n0, n1, _ := newConfDir(t, o)
		for _, typ := range allTypes {
			t.Run("type="+typ, func(t *testing.T) {
				ch := "chown"
				if typ == "symlink" {
					ch = "lchown"
				}
				// The super-user can always change the owner.
				c.createFile(t, typ, n0)
				c.expect(t, "0", nil, "lchown", n0, "123", "456")
				c.expect(t, "123,456", nil, "lstat", n0, "uid,gid")
				c.expect(t, "0", nil, "lchown", n0, "0", "0")
				c.expect(t, "0,0", nil, "lstat", n0, "uid,gid")
				if typ != "symlink" {
					c.mustRun(t, "symlink", n0, n1)
					luidgid := c.run(t, nil, "lstat", n1, "uid,gid")
					c.expect(t, "0", nil, "chown", n1, "123", "456")
					c.expect(t, "123,456", nil, "stat", n1, "uid,gid")
					c.expect(t, "123,456", nil, "stat", n0, "uid,gid")
					c.expect(t, luidgid, nil, "lstat", n1, "uid,gid")
					c.mustRun(t, "unlink", n1)
				}
				c.remove(t, typ, n0)

				// The owner may change the group to one of its groups.
				c.createFile(t, typ, n0)
				c.expect(t, "0", nil, "lchown", n0, "65534", "65533")
				c.expect(t, "0", user(65534, 65532, 65531), ch, n0, "-1", "65532")
				c.expect(t, "65534,65532", nil, "lstat", n0, "uid,gid")
				c.expect(t, "0", user(65534, 65532, 65531), ch, n0, "65534", "65531")
				c.expect(t, "65534,65531", nil, "lstat", n0, "uid,gid")
				c.remove(t, typ, n0)

				// Anyone may chown(-1, -1).
				c.createFile(t, typ, n0)
				c.expect(t, "0", nobody, ch, n0, "-1", "-1")
				c.expect(t, "0,0", nil, "lstat", n0, "uid,gid")

				// Refused changes leave owner and ctime alone.
				before := c.lstat(t, n0)
				c.expect(t, "EPERM", user(65534, 65534), ch, n0, "65534", "-1")
				c.expect(t, "EPERM", nobody, ch, n0, "-1", "65534")
				c.expect(t, "EPERM", nobody, ch, n0, "65534", "65534")
				if after := c.lstat(t, n0); after.Ctim != before.Ctim {
					t.Errorf("refused chown: ctime %v -> %v", before.Ctim, after.Ctim)
				}
				c.expect(t, "0,0", nil, "lstat", n0, "uid,gid")

				// Successful changes update ctime, by root and by the owner.
				before = c.lstat(t, n0)
				c.expect(t, "0", nil, ch, n0, "65534", "65533")
				after := c.lstat(t, n0)
				if nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("root chown: ctime %v -> %v", before.Ctim, after.Ctim)
				}
				before = after
				c.expect(t, "0", user(65534, 65532), ch, n0, "65534", "65532")
				c.expect(t, "65534,65532", nil, "lstat", n0, "uid,gid")
				if after := c.lstat(t, n0); nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("owner chown: ctime %v -> %v", before.Ctim, after.Ctim)
				}
				c.remove(t, typ, n0)

				if typ == "symlink" {
					return
				}
				// Set-ID bits: root's chown may clear them; a non-root
				// owner's chown clears them (Linux keeps them on
				// directories: a pjdfstest TODO); chown(-1, -1) may.
				c.createFile(t, typ, n0)
				c.mustRun(t, "chown", n0, "65534", "65533")
				c.mustRun(t, "chmod", n0, "06555")
				c.expect(t, "06555,65534,65533", nil, "stat", n0, "mode,uid,gid")
				c.expect(t, "0", nil, "chown", n0, "65532", "65531")
				c.expect(t, "(06555|0555),65532,65531", nil, "stat", n0, "mode,uid,gid")
				c.mustRun(t, "chown", n0, "65534", "65533")
				c.mustRun(t, "chmod", n0, "06555")
				c.expect(t, "0", user(65534, 65533, 65532), "chown", n0, "65534", "65532")
				want := "0555,65534,65532"
				if typ == "dir" {
					want = "(06555|0555),65534,65532"
				}
				c.expect(t, want, nil, "stat", n0, "mode,uid,gid")
				c.mustRun(t, "chmod", n0, "06555")
				c.expect(t, "0", user(65534, 65533, 65532), "chown", n0, "-1", "-1")
				c.expect(t, "(06555|0555),65534,65532", nil, "stat", n0, "mode,uid,gid")
				c.remove(t, typ, n0)
			})
		}
		// fchown and fchmod of an open file (tar, cp -p and install do this).
		t.Run("open-file", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.expect(t, "123,456", nil, "open", n0, "O_RDONLY", ":", "fchown", "0", "123", "456", ":", "fstat", "0", "uid,gid")
			c.expect(t, "123,456", nil, "lstat", n0, "uid,gid")
			c.expect(t, "0600", nil, "open", n0, "O_RDONLY", ":", "fchmod", "0", "0600", ":", "fstat", "0", "mode")
			c.expect(t, "0600", nil, "lstat", n0, "mode")
			// chown(2) by name while someone holds the file open.
			c.expect(t, "77,88", nil, "open", n0, "O_RDONLY", ":", "chown", n0, "77", "88", ":", "fstat", "0", "uid,gid")
			c.expect(t, "77,88", nil, "lstat", n0, "uid,gid")
			c.mustRun(t, "unlink", n0)
		})
	})
}

// TestConformanceUtimensat: utimensat/00.t to 09.t (birth times, 03.t,
// are not on Linux).
func TestConformanceUtimensat(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, _, n0, _, n2 := newConfDir(t, o)
		const (
			date1, date2 = "1900000000", "1950000000"
			date3, date4 = "1960000000", "1970000000"
			date5, date6 = "1980000000", "1990000000"
		)
		for _, typ := range nonSymlinkTypes {
			t.Run("00/type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0)
				c.expect(t, "0", nil, "utimensat", n0, date1, "0", date2, "0", "0")
				c.expect(t, date1+","+date2, nil, "lstat", n0, "atime,mtime")
				// An open file: the same through its descriptor's state.
				if typ == "regular" {
					c.expect(t, date2+","+date1, nil, "open", n0, "O_RDWR", ":", "utimensat", n0, date2, "0", date1, "0", "0", ":", "fstat", "0", "atime,mtime")
				}
				c.remove(t, typ, n0)
			})
		}
		t.Run("01/UTIME_NOW", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.setPast(t, n0)
			c.expect(t, "0", nil, "utimensat", n0, "0", "UTIME_NOW", "0", "UTIME_NOW", "0")
			st := c.lstat(t, n0)
			if st.Atim.Sec <= pastSec || st.Mtim.Sec <= pastSec {
				t.Errorf("UTIME_NOW: atime %v mtime %v", st.Atim, st.Mtim)
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("02/UTIME_OMIT", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			mtime := c.run(t, nil, "lstat", n0, "mtime")
			c.expect(t, "0", nil, "utimensat", n0, date1, "0", "0", "UTIME_OMIT", "0")
			c.expect(t, date1+","+mtime, nil, "lstat", n0, "atime,mtime")
			c.expect(t, "0", nil, "utimensat", n0, "0", "UTIME_OMIT", date2, "0", "0")
			c.expect(t, date1+","+date2, nil, "lstat", n0, "atime,mtime")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("04/mtime-before-atime", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.expect(t, "0", nil, "utimensat", n0, "100000000", "0", "200000000", "0", "0")
			c.expect(t, "100000000,200000000", nil, "lstat", n0, "atime,mtime")
			c.expect(t, "0", nil, "utimensat", n0, "200000000", "0", "100000000", "0", "0")
			c.expect(t, "200000000,100000000", nil, "lstat", n0, "atime,mtime")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("05/symlink", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.mustRun(t, "symlink", "n0", n2)
			c.expect(t, "0", nil, "utimensat", n0, date1, "0", date2, "0", "0")
			c.expect(t, "0", nil, "utimensat", n2, date3, "0", date4, "0", "AT_SYMLINK_NOFOLLOW")
			c.expect(t, date1+","+date2, nil, "lstat", n0, "atime,mtime")
			c.expect(t, date3+","+date4, nil, "lstat", n2, "atime,mtime")
			c.expect(t, "0", nil, "utimensat", n2, date5, "0", date6, "0", "0")
			c.expect(t, date5+","+date6, nil, "lstat", n0, "atime,mtime")
			if got := c.run(t, nil, "lstat", n2, "atime"); got == date5 {
				t.Errorf("following utimensat set the link's atime")
			}
			c.expect(t, date4, nil, "lstat", n2, "mtime")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "unlink", n2)
		})
		t.Run("06/UTIME_NOW-permission", func(t *testing.T) {
			c.createFile(t, "regular", n0, "0644")
			c.expect(t, "EACCES", nobody, "utimensat", n0, "0", "UTIME_NOW", "0", "UTIME_NOW", "0")
			c.mustRun(t, "chown", n0, "65534", "65534")
			c.mustRun(t, "chmod", n0, "0444")
			c.expect(t, "0", nobody, "utimensat", n0, "0", "UTIME_NOW", "0", "UTIME_NOW", "0")
			c.expect(t, "0", nil, "utimensat", n0, "0", "UTIME_OMIT", "0", "UTIME_OMIT", "0")
			c.mustRun(t, "chown", n0, "0", "0")
			c.mustRun(t, "chmod", n0, "0666")
			c.setPast(t, n0)
			c.expect(t, "0", nobody, "utimensat", n0, "0", "UTIME_NOW", "0", "UTIME_NOW", "0")
			if st := c.lstat(t, n0); st.Mtim.Sec <= pastSec || st.Atim.Sec <= pastSec {
				t.Errorf("UTIME_NOW by a writer: atime %v mtime %v", st.Atim, st.Mtim)
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("07/owner-or-root", func(t *testing.T) {
			c.createFile(t, "regular", n0, "0644", "0", "0")
			for _, mode := range []string{"0644", "0666"} {
				c.mustRun(t, "chmod", n0, mode)
				c.expect(t, "EPERM", nobody, "utimensat", n0, "0", "UTIME_OMIT", date2, "0", "0")
				c.expect(t, "EPERM", nobody, "utimensat", n0, date1, "0", "0", "UTIME_OMIT", "0")
				c.expect(t, "EPERM", nobody, "utimensat", n0, date1, "0", date2, "0", "0")
			}
			c.mustRun(t, "chown", n0, "65534", "65534")
			c.mustRun(t, "chmod", n0, "0444")
			c.expect(t, "0", nobody, "utimensat", n0, date1, "0", date2, "0", "0")
			c.expect(t, date1+","+date2, nil, "lstat", n0, "atime,mtime")
			c.expect(t, "0", nil, "utimensat", n0, date2, "0", date1, "0", "0")
			c.expect(t, date2+","+date1, nil, "lstat", n0, "atime,mtime")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("08/subsecond", func(t *testing.T) {
			c.createFile(t, "regular", n0, "0644")
			c.expect(t, "0", nil, "utimensat", n0, "100000000", "100000000", "200000000", "200000000", "0")
			c.expect(t, "100000000,200000000", nil, "lstat", n0, "atime_ns,mtime_ns")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("09/y2038", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.expect(t, "0", nil, "utimensat", n0, "2147483648", "0", "4294967296", "0", "0")
			c.expect(t, "2147483648,4294967296", nil, "lstat", n0, "atime,mtime")
			c.mustRun(t, "unlink", n0)
		})
		// Beyond pjdfstest's 2^32: year 2286, past what int64 nanoseconds
		// hold (2262) but within ext4's range (2446).
		t.Run("09/y2262", func(t *testing.T) {
			c.createFile(t, "regular", n0)
			c.expect(t, "0", nil, "utimensat", n0, "10000000000", "0", "10000000000", "5", "0")
			c.expect(t, "10000000000,10000000000,5", nil, "lstat", n0, "atime,mtime,mtime_ns")
			c.mustRun(t, "unlink", n0)
		})
		// Reading a symlink's size (lstat) must not move its access time.
		t.Run("symlink-atime", func(t *testing.T) {
			c.mustRun(t, "symlink", "some/target", n2)
			c.expect(t, "0", nil, "utimensat", n2, date3, "0", date4, "0", "AT_SYMLINK_NOFOLLOW")
			c.expect(t, "11", nil, "lstat", n2, "size")
			c.expect(t, date3+","+date4, nil, "lstat", n2, "atime,mtime")
			c.mustRun(t, "unlink", n2)
		})
	})
}

// TestConformanceTruncate: truncate/00.t, 05.t, 12.t; ftruncate/00.t;
// open/00.t (O_TRUNC); posix_fallocate/00.t.
func TestConformanceTruncate(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, d, n0, n1, _ := newConfDir(t, o)
		t.Run("truncate/00", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			for _, size := range []string{"1234567", "567", "0", "4095", "4096", "4097", "1"} {
				c.expect(t, "0", nil, "truncate", n0, size)
				c.expect(t, size, nil, "lstat", n0, "size")
			}
			before := c.lstat(t, n0)
			c.expect(t, "0", nil, "truncate", n0, "123")
			after := c.lstat(t, n0)
			if nsec(after.Ctim) <= nsec(before.Ctim) || nsec(after.Mtim) <= nsec(before.Mtim) {
				t.Errorf("truncate: ctime %v -> %v, mtime %v -> %v", before.Ctim, after.Ctim, before.Mtim, after.Mtim)
			}
			c.expect(t, "EACCES", nobody, "truncate", n0, "1234")
			if st := c.lstat(t, n0); st.Ctim != after.Ctim || st.Size != 123 {
				t.Errorf("refused truncate: ctime %v -> %v, size %d", after.Ctim, st.Ctim, st.Size)
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("truncate/05", func(t *testing.T) {
			c.mkdirAs(t, n1, "0755", "65534", "65534")
			f := filepath.Join(n1, "n2")
			c.expect(t, "0", nobody, "create", f, "0644")
			c.expect(t, "0", nobody, "truncate", f, "123")
			c.expect(t, "123", nobody, "stat", f, "size")
			c.mustRun(t, "chmod", n1, "0644")
			c.expect(t, "EACCES", nobody, "truncate", f, "1234")
			c.mustRun(t, "chmod", n1, "0755")
			c.expect(t, "0", nobody, "truncate", f, "1234")
			c.expect(t, "1234", nobody, "stat", f, "size")
			c.expect(t, "0", nobody, "unlink", f)
			c.mustRun(t, "rmdir", n1)
		})
		t.Run("truncate/12-EFBIG", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			switch r := c.run(t, nil, "truncate", n0, "999999999999999"); r {
			case "EFBIG", "EINVAL":
				c.expect(t, "0", nil, "stat", n0, "size")
			case "0":
				c.expect(t, "999999999999999", nil, "stat", n0, "size")
			default:
				t.Errorf("truncate to 999999999999999: %s", r)
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("truncate-errors", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			c.expect(t, "EINVAL", nil, "truncate", n0, "-1")
			c.expect(t, "EISDIR", nil, "truncate", d, "0")
			c.expect(t, "EINVAL", nil, "open", n0, "O_RDWR", ":", "ftruncate", "0", "-1")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("ftruncate/00", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			c.expect(t, "0", nil, "open", n0, "O_RDWR", ":", "ftruncate", "0", "1234567")
			c.expect(t, "1234567", nil, "lstat", n0, "size")
			c.expect(t, "0", nil, "open", n0, "O_WRONLY", ":", "ftruncate", "0", "567")
			c.expect(t, "567", nil, "lstat", n0, "size")
			before := c.lstat(t, n0)
			c.expect(t, "0", nil, "open", n0, "O_RDWR", ":", "ftruncate", "0", "123")
			after := c.lstat(t, n0)
			if nsec(after.Ctim) <= nsec(before.Ctim) {
				t.Errorf("ftruncate: ctime %v -> %v", before.Ctim, after.Ctim)
			}
			c.expect(t, "EINVAL", nobody, "open", n0, "O_RDONLY", ":", "ftruncate", "0", "1")
			if st := c.lstat(t, n0); st.Ctim != after.Ctim {
				t.Errorf("refused ftruncate: ctime %v -> %v", after.Ctim, st.Ctim)
			}
			c.mustRun(t, "unlink", n0)
			// The new file's mode does not matter, only the open flags.
			c.expect(t, "0", nil, "open", n0, "O_CREAT,O_RDWR", "0", ":", "ftruncate", "0", "0")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "chmod", d, "0777")
			c.expect(t, "0", nobody, "open", n0, "O_CREAT,O_RDWR", "0", ":", "ftruncate", "0", "0")
			c.expect(t, "0", nobody, "open", n1, "O_CREAT,O_RDWR", "0", ":", "ftruncate", "0", "5000", ":", "write", "0", "x")
			c.expect(t, "5000", nil, "lstat", n1, "size")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "unlink", n1)
			c.mustRun(t, "chmod", d, "0755")
		})
		t.Run("open/00-O_TRUNC", func(t *testing.T) {
			// pjdfstest truncates a 5-byte file as root; here also an empty
			// one (POSIX: O_TRUNC marks ctime and mtime whenever the file
			// existed), and by a non-owner with write permission.
			for _, content := range []string{"test\n", ""} {
				c.mustRun(t, "create", n0, "0666")
				for _, who := range []*cred{nil, nobody} {
					if content != "" {
						c.mustRun(t, "open", n0, "O_WRONLY", ":", "write", "0", content)
					}
					c.setPast(t, n0)
					before := c.lstat(t, n0)
					c.expect(t, "0", who, "open", n0, "O_WRONLY,O_TRUNC")
					after := c.lstat(t, n0)
					if after.Mtim.Sec <= pastSec || nsec(after.Ctim) <= nsec(before.Ctim) || after.Size != 0 {
						t.Errorf("%s O_TRUNC of %d bytes: mtime %v, ctime %v -> %v, size %d", who, len(content), after.Mtim, before.Ctim, after.Ctim, after.Size)
					}
				}
				c.mustRun(t, "chmod", n0, "0644")
				c.expect(t, "EACCES", nobody, "open", n0, "O_WRONLY,O_TRUNC")
				c.expect(t, "EACCES", nobody, "open", n0, "O_RDONLY,O_TRUNC")
				c.mustRun(t, "unlink", n0)
			}
		})
		t.Run("O_TRUNC-while-open", func(t *testing.T) {
			// An empty file held open elsewhere, opened again with O_TRUNC.
			c.mustRun(t, "create", n0, "0644")
			c.setPast(t, n0)
			st := c.run(t, nil, "open", n0, "O_RDONLY", ":", "open", n0, "O_WRONLY,O_TRUNC", ":", "fstat", "1", "mtime")
			if n, _ := strconv.ParseInt(st, 10, 64); n <= pastSec {
				t.Errorf("O_TRUNC while open: mtime %s", st)
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("write-times", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0666")
			for _, who := range []*cred{nil, nobody} {
				c.setPast(t, n0)
				before := c.lstat(t, n0)
				c.expect(t, "0", who, "open", n0, "O_WRONLY", ":", "write", "0", "data")
				after := c.lstat(t, n0)
				if after.Mtim.Sec <= pastSec || nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("%s write: mtime %v, ctime %v -> %v", who, after.Mtim, before.Ctim, after.Ctim)
				}
			}
			c.mustRun(t, "unlink", n0)
		})
		t.Run("truncate-clears-setid", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			c.mustRun(t, "chmod", n0, "06777")
			c.expect(t, "0", nobody, "truncate", n0, "10")
			c.expect(t, "0777,10", nil, "stat", n0, "mode,size")
			c.mustRun(t, "chmod", n0, "06777")
			c.expect(t, "0", nobody, "open", n0, "O_WRONLY", ":", "ftruncate", "0", "3")
			c.expect(t, "0777,3", nil, "stat", n0, "mode,size")
			c.mustRun(t, "unlink", n0)
		})
		t.Run("posix_fallocate/00", func(t *testing.T) {
			c.mustRun(t, "create", n0, "0644")
			c.expect(t, "0", nil, "open", n0, "O_RDWR", ":", "posix_fallocate", "0", "0", "567")
			c.expect(t, "567", nil, "lstat", n0, "size")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "create", n0, "0644")
			c.mustRun(t, "open", n0, "O_WRONLY", ":", "write", "0", strings.Repeat("x", 12345))
			c.expect(t, "0", nil, "open", n0, "O_RDWR", ":", "posix_fallocate", "0", "20000", "3456")
			c.expect(t, "23456", nil, "lstat", n0, "size")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "create", n0, "0644")
			before := c.lstat(t, n0)
			c.expect(t, "0", nil, "open", n0, "O_RDWR", ":", "posix_fallocate", "0", "0", "123")
			after := c.lstat(t, n0)
			if nsec(after.Ctim) <= nsec(before.Ctim) {
				t.Errorf("fallocate: ctime %v -> %v", before.Ctim, after.Ctim)
			}
			c.expect(t, "EINVAL", nil, "open", n0, "O_WRONLY", ":", "posix_fallocate", "0", "0", "0")
			if st := c.lstat(t, n0); st.Ctim != after.Ctim {
				t.Errorf("refused fallocate: ctime %v -> %v", after.Ctim, st.Ctim)
			}
			c.expect(t, "EBADF", nil, "open", n0, "O_RDONLY", ":", "posix_fallocate", "0", "0", "1")
			c.mustRun(t, "unlink", n0)
			c.expect(t, "0", nil, "open", n0, "O_CREAT,O_RDWR", "0", ":", "posix_fallocate", "0", "0", "1")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "chmod", d, "0777")
			c.expect(t, "0", nobody, "open", n0, "O_CREAT,O_RDWR", "0", ":", "posix_fallocate", "0", "0", "1")
			c.expect(t, "1", nil, "lstat", n0, "size")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "chmod", d, "0755")
		})
	})
}

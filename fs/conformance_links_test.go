package fs_test

import (
	"fmt"
	"path/filepath"
	"testing"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// TestConformanceLinks: link/00.t, unlink/00.t, rmdir/00.t, rename/00.t,
// rename/23.t, rename/24.t — link counts, inode numbers and the ctime and
// mtime that linking, unlinking and renaming mark.
func TestConformanceLinks(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, d, n0, n1, n2 := newConfDir(t, o)
		for _, typ := range []string{"regular", "fifo", "block", "char", "socket"} {
			t.Run("link/00/type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0)
				c.expect(t, typ+",1", nil, "lstat", n0, "type,nlink")
				c.expect(t, "0", nil, "link", n0, n1)
				c.expect(t, typ+",2", nil, "lstat", n0, "type,nlink")
				c.expect(t, typ+",2", nil, "lstat", n1, "type,nlink")
				c.expect(t, "0", nil, "link", n1, n2)
				for _, n := range []string{n0, n1, n2} {
					c.expect(t, typ+",3", nil, "lstat", n, "type,nlink")
				}
				c.expect(t, "0", nil, "chmod", n1, "0201")
				c.expect(t, "0", nil, "chown", n1, "65534", "65533")
				for _, n := range []string{n0, n1, n2} {
					c.expect(t, typ+",0201,3,65534,65533", nil, "lstat", n, "type,mode,nlink,uid,gid")
				}
				c.expect(t, "0", nil, "unlink", n0)
				c.expect(t, "ENOENT", nil, "lstat", n0, "type")
				c.expect(t, typ+",0201,2,65534,65533", nil, "lstat", n1, "type,mode,nlink,uid,gid")
				c.expect(t, typ+",0201,2,65534,65533", nil, "lstat", n2, "type,mode,nlink,uid,gid")
				c.expect(t, "0", nil, "unlink", n2)
				c.expect(t, typ+",0201,1,65534,65533", nil, "lstat", n1, "type,mode,nlink,uid,gid")
				c.expect(t, "0", nil, "unlink", n1)
				c.expect(t, "ENOENT", nil, "lstat", n1, "type")
			})
			t.Run("link-times/type="+typ, func(t *testing.T) {
				// link/00.t: link marks the file's ctime and the
				// directory's ctime and mtime; a refused link marks none.
				c.createFile(t, typ, n0)
				c.setPast(t, d)
				file, dir := c.lstat(t, n0), c.lstat(t, d)
				c.expect(t, "0", nil, "link", n0, n1)
				file2, dir2 := c.lstat(t, n0), c.lstat(t, d)
				if nsec(file2.Ctim) <= nsec(file.Ctim) {
					t.Errorf("link: file ctime %v -> %v", file.Ctim, file2.Ctim)
				}
				if nsec(dir2.Ctim) <= nsec(dir.Ctim) || dir2.Mtim.Sec <= pastSec {
					t.Errorf("link: dir ctime %v -> %v, mtime %v", dir.Ctim, dir2.Ctim, dir2.Mtim)
				}
				// unlink/00.t: unlinking one name marks the file's ctime
				// and the directory's ctime and mtime.
				c.setPast(t, d)
				file, dir = c.lstat(t, n0), c.lstat(t, d)
				c.expect(t, "0", nil, "unlink", n1)
				file2, dir2 = c.lstat(t, n0), c.lstat(t, d)
				if nsec(file2.Ctim) <= nsec(file.Ctim) {
					t.Errorf("unlink: remaining name's ctime %v -> %v", file.Ctim, file2.Ctim)
				}
				if nsec(dir2.Ctim) <= nsec(dir.Ctim) || dir2.Mtim.Sec <= pastSec {
					t.Errorf("unlink: dir ctime %v -> %v, mtime %v", dir.Ctim, dir2.Ctim, dir2.Mtim)
				}
				// Refused link (no write permission on the directory)
				// and refused unlink change nothing.
				c.mustRun(t, "lchown", n0, "65534", "-1")
				file, dir = c.lstat(t, n0), c.lstat(t, d)
				c.expect(t, "EACCES", nobody, "link", n0, n1)
				c.expect(t, "EACCES", nobody, "unlink", n0)
				file2, dir2 = c.lstat(t, n0), c.lstat(t, d)
				if file2.Ctim != file.Ctim || dir2.Ctim != dir.Ctim || dir2.Mtim != dir.Mtim {
					t.Errorf("refused link/unlink: file ctime %v -> %v, dir ctime %v -> %v, mtime %v -> %v",
						file.Ctim, file2.Ctim, dir.Ctim, dir2.Ctim, dir.Mtim, dir2.Mtim)
				}
				c.mustRun(t, "unlink", n0)
			})
			t.Run("rename/00/type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0, "0644")
				c.expect(t, typ+",0644,1", nil, "lstat", n0, "type,mode,nlink")
				ino := c.run(t, nil, "lstat", n0, "inode")
				c.expect(t, "0", nil, "rename", n0, n1)
				c.expect(t, "ENOENT", nil, "lstat", n0, "type")
				c.expect(t, typ+","+ino+",0644,1", nil, "lstat", n1, "type,inode,mode,nlink")
				c.expect(t, "0", nil, "link", n1, n0)
				c.expect(t, typ+","+ino+",0644,2", nil, "lstat", n0, "type,inode,mode,nlink")
				c.expect(t, "0", nil, "rename", n1, n2)
				c.expect(t, typ+","+ino+",0644,2", nil, "lstat", n0, "type,inode,mode,nlink")
				c.expect(t, "ENOENT", nil, "lstat", n1, "type")
				c.expect(t, typ+","+ino+",0644,2", nil, "lstat", n2, "type,inode,mode,nlink")
				c.mustRun(t, "unlink", n0)
				c.mustRun(t, "unlink", n2)
			})
			t.Run("rename/23/type="+typ, func(t *testing.T) {
				// Renaming onto a name with another link drops the
				// target's link count and marks its ctime.
				c.createFile(t, typ, n0)
				c.createFile(t, typ, n1)
				c.expect(t, "0", nil, "link", n1, n2)
				before := c.lstat(t, n2)
				c.expect(t, "0", nil, "rename", n0, n1)
				c.expect(t, typ+",1", nil, "lstat", n2, "type,nlink")
				if after := c.lstat(t, n2); nsec(after.Ctim) <= nsec(before.Ctim) {
					t.Errorf("rename onto a linked name: its ctime %v -> %v", before.Ctim, after.Ctim)
				}
				c.mustRun(t, "unlink", n1)
				c.mustRun(t, "unlink", n2)
			})
		}
		t.Run("rename/00/dir-and-symlink", func(t *testing.T) {
			c.mustRun(t, "mkdir", n0, "0755")
			ino := c.run(t, nil, "lstat", n0, "inode")
			c.expect(t, "0", nil, "rename", n0, n1)
			c.expect(t, "ENOENT", nil, "lstat", n0, "type")
			c.expect(t, "dir,"+ino+",0755", nil, "lstat", n1, "type,inode,mode")
			c.mustRun(t, "rmdir", n1)
			c.mustRun(t, "create", n0, "0644")
			rino := c.run(t, nil, "lstat", n0, "inode")
			c.mustRun(t, "symlink", n0, n1)
			sino := c.run(t, nil, "lstat", n1, "inode")
			c.expect(t, "regular,"+rino+",0644", nil, "stat", n1, "type,inode,mode")
			c.expect(t, "0", nil, "rename", n1, n2)
			c.expect(t, "symlink,"+sino, nil, "lstat", n2, "type,inode")
			c.expect(t, "regular,"+rino, nil, "stat", n2, "type,inode")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "unlink", n2)
		})
		for _, typ := range allTypes {
			t.Run("rename/00-refused/type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0)
				before := c.lstat(t, n0)
				c.expect(t, "EACCES", nobody, "rename", n0, n1)
				if after := c.lstat(t, n0); after.Ctim != before.Ctim {
					t.Errorf("refused rename: ctime %v -> %v", before.Ctim, after.Ctim)
				}
				c.remove(t, typ, n0)
			})
		}
		t.Run("rename/24", func(t *testing.T) {
			sp, dp := filepath.Join(d, "sp"), filepath.Join(d, "dp")
			c.mustRun(t, "mkdir", sp, "0755")
			c.mustRun(t, "mkdir", dp, "0755")
			c.mustRun(t, "mkdir", filepath.Join(sp, "src"), "0755")
			c.expect(t, "3", nil, "lstat", sp, "nlink")
			c.expect(t, "2", nil, "lstat", dp, "nlink")
			c.expect(t, c.run(t, nil, "lstat", sp, "inode"), nil, "lstat", filepath.Join(sp, "src", ".."), "inode")
			c.setPast(t, sp)
			c.setPast(t, dp)
			before := c.lstat(t, dp)
			c.expect(t, "0", nil, "rename", filepath.Join(sp, "src"), filepath.Join(dp, "dst"))
			c.expect(t, "2", nil, "lstat", sp, "nlink")
			c.expect(t, "3", nil, "lstat", dp, "nlink")
			c.expect(t, c.run(t, nil, "lstat", dp, "inode"), nil, "lstat", filepath.Join(dp, "dst", ".."), "inode")
			// Both directories' mtime and ctime are marked.
			for _, p := range []string{sp, dp} {
				if st := c.lstat(t, p); st.Mtim.Sec <= pastSec || nsec(st.Ctim) <= nsec(before.Ctim)-1e9 {
					t.Errorf("rename: %s mtime %v ctime %v", c.short([]string{p}), st.Mtim, st.Ctim)
				}
			}
			c.mustRun(t, "rmdir", filepath.Join(dp, "dst"))
			c.mustRun(t, "rmdir", dp)
			c.mustRun(t, "rmdir", sp)
		})
		t.Run("rmdir/00", func(t *testing.T) {
			c.mustRun(t, "mkdir", n0, "0755")
			c.mustRun(t, "mkdir", filepath.Join(n0, "n1"), "0755")
			c.expect(t, "3", nil, "lstat", n0, "nlink")
			c.setPast(t, n0)
			before := c.lstat(t, n0)
			c.expect(t, "0", nil, "rmdir", filepath.Join(n0, "n1"))
			after := c.lstat(t, n0)
			if after.Mtim.Sec <= pastSec || nsec(after.Ctim) <= nsec(before.Ctim) || after.Nlink != 2 {
				t.Errorf("rmdir: parent mtime %v, ctime %v -> %v, nlink %d", after.Mtim, before.Ctim, after.Ctim, after.Nlink)
			}
			c.expect(t, "0", nil, "rmdir", n0)
			c.expect(t, "ENOENT", nil, "lstat", n0, "type")
		})
	})
}

// TestConformanceSticky: unlink/11.t, rmdir/11.t, rename/09.t, rename/10.t
// — in a sticky directory only the owner of the entry or of the directory
// (or root) may remove or rename it, or replace it.
func TestConformanceSticky(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c := newConf(t, o)
		// sticky returns a fresh sticky (01777) directory owned by id, in a
		// fresh directory of its own where the case makes its other
		// directories. The cases run in parallel: each runs several steps as
		// another user, and a step is a process of its own; mkdirAs opens a
		// parent to all for a moment, so no two cases share one.
		sticky := func(t *testing.T, id string) (s, base string) {
			t.Helper()
			base = c.dir(t)
			s = filepath.Join(base, "s")
			c.mkdirAs(t, s, "01777", id, id)
			return s, base
		}
		u := nobody
		for _, typ := range []string{"regular", "fifo", "socket", "symlink", "dir"} {
			rm := "unlink"
			if typ == "dir" {
				rm = "rmdir"
			}
			for _, tc := range []struct {
				dirOwner, fileOwner string
				want                string
			}{
				{"65534", "65534", "0"},
				{"65534", "0", "0"},
				{"65534", "65533", "0"},
				{"0", "65534", "0"},
				{"65533", "65534", "0"},
				{"0", "0", "EACCES|EPERM"},
				{"65533", "65533", "EACCES|EPERM"},
			} {
				name := fmt.Sprintf("type=%s,dir=%s,file=%s", typ, tc.dirOwner, tc.fileOwner)
				t.Run("unlink/11/"+name, func(t *testing.T) {
					t.Parallel()
					s, _ := sticky(t, tc.dirOwner)
					n1 := filepath.Join(s, "n1")
					c.createFile(t, typ, n1, tc.fileOwner, tc.fileOwner)
					c.expect(t, typ+","+tc.fileOwner+","+tc.fileOwner, nil, "lstat", n1, "type,uid,gid")
					c.expect(t, tc.want, u, rm, n1)
					if tc.want == "0" {
						c.expect(t, "ENOENT", nil, "lstat", n1, "type")
					} else {
						c.expect(t, typ+","+tc.fileOwner+","+tc.fileOwner, nil, "lstat", n1, "type,uid,gid")
						c.remove(t, typ, n1)
					}
				})
				// rename/09.t: from a sticky directory to one the user
				// owns (a directory that changes parent must also be
				// the user's: its ".." changes).
				t.Run("rename/09/"+name, func(t *testing.T) {
					t.Parallel()
					s, base := sticky(t, tc.dirOwner)
					to := filepath.Join(base, "t")
					c.mkdirAs(t, to, "0755", "65534", "65534")
					n2, n3 := filepath.Join(s, "n2"), filepath.Join(to, "n3")
					c.createFile(t, typ, n2, tc.fileOwner, tc.fileOwner)
					ino := c.run(t, nil, "lstat", n2, "inode")
					want := tc.want
					if typ == "dir" && tc.fileOwner != "65534" {
						want = "EACCES|EPERM"
					}
					c.expect(t, want, u, "rename", n2, n3)
					if want == "0" {
						c.expect(t, "ENOENT", nil, "lstat", n2, "type")
						c.expect(t, ino+","+tc.fileOwner+","+tc.fileOwner, nil, "lstat", n3, "inode,uid,gid")
						c.remove(t, typ, n3)
					} else {
						c.expect(t, ino+","+tc.fileOwner+","+tc.fileOwner, nil, "lstat", n2, "inode,uid,gid")
						c.expect(t, "ENOENT", nil, "lstat", n3, "type")
						// rename/09.t: within the sticky directory it is
						// still refused unless the user owns the entry
						// or the directory.
						c.remove(t, typ, n2)
					}
				})
				// rename/10.t: onto an existing entry of a sticky
				// directory.
				if typ == "dir" {
					continue
				}
				t.Run("rename/10/"+name, func(t *testing.T) {
					t.Parallel()
					s, base := sticky(t, tc.dirOwner)
					from := filepath.Join(base, "f")
					c.mkdirAs(t, from, "0755", "65534", "65534")
					n2, n3 := filepath.Join(from, "n2"), filepath.Join(s, "n3")
					c.createFile(t, "regular", n2, "65534", "65534")
					ino := c.run(t, nil, "lstat", n2, "inode")
					c.createFile(t, typ, n3, tc.fileOwner, tc.fileOwner)
					c.expect(t, tc.want, u, "rename", n2, n3)
					if tc.want == "0" {
						c.expect(t, ino, nil, "lstat", n3, "inode")
						c.expect(t, "ENOENT", nil, "lstat", n2, "type")
						c.mustRun(t, "unlink", n3)
					} else {
						c.expect(t, ino, nil, "lstat", n2, "inode")
						c.expect(t, tc.fileOwner+","+tc.fileOwner, nil, "lstat", n3, "uid,gid")
						c.mustRun(t, "unlink", n2)
						c.remove(t, typ, n3)
					}
				})
			}
		}
	})
}

package fs_test

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// TestConformanceErrors: the error cases of rename (rename/12.t to 21.t),
// mkdir, mkfifo, mknod, link and symlink (EEXIST), rmdir and unlink
// (ENOTEMPTY, ENOTDIR, EISDIR), ENAMETOOLONG for names and for paths
// (*/02.t, */03.t) and ELOOP (*/13.t).
func TestConformanceErrors(t *testing.T) {
	t.Parallel() // each case has a mount of its own; the race leg waits on processes, not CPU
	inBothNameModes(t, func(t *testing.T, o kfs.Options) {
		c, d, n0, n1, _ := newConfDir(t, o)
		for _, typ := range allTypes {
			t.Run("EEXIST/type="+typ, func(t *testing.T) {
				c.createFile(t, typ, n0)
				c.expect(t, "EEXIST", nil, "mkdir", n0, "0755")
				c.expect(t, "EEXIST", nil, "mkfifo", n0, "0644")
				c.expect(t, "EEXIST", nil, "mknod", n0, "c", "0644", "1", "2")
				c.expect(t, "EEXIST", nil, "symlink", "test", n0)
				c.expect(t, "EEXIST", nil, "create", n0, "0644")
				c.expect(t, "EADDRINUSE", nil, "bind", n0)
				c.mustRun(t, "create", n1, "0644")
				c.expect(t, "EEXIST", nil, "link", n1, n0)
				c.mustRun(t, "unlink", n1)
				c.remove(t, typ, n0)
			})
			// rename/20.t: onto a non-empty directory.
			t.Run("rename/20/type="+typ, func(t *testing.T) {
				c.mustRun(t, "mkdir", n0, "0755")
				c.mustRun(t, "mkdir", n1, "0755")
				c.createFile(t, typ, filepath.Join(n1, "n2"))
				c.expect(t, "EEXIST|ENOTEMPTY", nil, "rename", n0, n1)
				c.expect(t, "EEXIST|ENOTEMPTY", nil, "rmdir", n1)
				c.remove(t, typ, filepath.Join(n1, "n2"))
				c.mustRun(t, "rmdir", n1)
				c.mustRun(t, "rmdir", n0)
			})
			if typ == "dir" {
				continue
			}
			// rename/14.t, 15.t; rmdir/01.t; unlink/?? (EISDIR on Linux).
			t.Run("dir-vs-nondir/type="+typ, func(t *testing.T) {
				c.mustRun(t, "mkdir", n0, "0755")
				c.createFile(t, typ, n1)
				c.expect(t, "EISDIR", nil, "rename", n1, n0)
				c.expect(t, "ENOTDIR", nil, "rename", n0, n1)
				c.expect(t, "ENOTDIR", nil, "rmdir", n1)
				if typ != "symlink" { // a dangling link: ENOENT
					c.expect(t, "ENOTDIR", nil, "mkdir", filepath.Join(n1, "x"), "0755")
				}
				c.expect(t, "dir", nil, "lstat", n0, "type")
				c.expect(t, typ, nil, "lstat", n1, "type")
				c.remove(t, typ, n1)
				c.expect(t, "EISDIR", nil, "unlink", n0)
				c.expect(t, "EPERM", nil, "link", n0, n1)
				c.mustRun(t, "rmdir", n0)
			})
		}
		// mknod/08.t: devices need privilege.
		t.Run("mknod-EPERM", func(t *testing.T) {
			c.mustRun(t, "chmod", d, "0777")
			c.expect(t, "EPERM", nobody, "mknod", n0, "c", "0644", "1", "2")
			c.expect(t, "EPERM", nobody, "mknod", n0, "b", "0644", "1", "2")
			c.expect(t, "ENOENT", nil, "lstat", n0, "type")
			c.mustRun(t, "chmod", d, "0755")
		})
		t.Run("rename-into-itself", func(t *testing.T) {
			c.mustRun(t, "mkdir", n0, "0755")
			c.mustRun(t, "mkdir", filepath.Join(n0, "sub"), "0755")
			c.expect(t, "EINVAL", nil, "rename", n0, filepath.Join(n0, "sub", "x"))
			c.expect(t, "EINVAL", nil, "rename", n0, filepath.Join(n0, "x"))
			c.expect(t, "0", nil, "rename", n0, n0)
			c.expect(t, "ENOTEMPTY|EEXIST", nil, "rename", filepath.Join(n0, "sub"), d)
			c.mustRun(t, "rmdir", filepath.Join(n0, "sub"))
			c.expect(t, "EINVAL|EBUSY", nil, "rmdir", n0+"/.")
			c.mustRun(t, "rmdir", n0)
		})
		t.Run("ENAMETOOLONG/name", func(t *testing.T) {
			long := filepath.Join(d, strings.Repeat("x", 255))
			tooLong := long + "x"
			for _, typ := range []string{"regular", "dir", "fifo", "socket", "symlink"} {
				if typ == "socket" {
					continue // sun_path is shorter than NAME_MAX
				}
				c.expect(t, "0", nil, createOp(typ, long, "0644")...)
				c.expect(t, typ, nil, "lstat", long, "type")
				c.expect(t, "ENAMETOOLONG", nil, createOp(typ, tooLong, "0644")...)
				c.remove(t, typ, long)
			}
			c.mustRun(t, "create", n0, "0644")
			c.expect(t, "0", nil, "rename", n0, long)
			c.expect(t, "0", nil, "rename", long, n0)
			c.expect(t, "ENAMETOOLONG", nil, "rename", n0, tooLong)
			c.expect(t, "0", nil, "link", n0, long)
			c.expect(t, "ENAMETOOLONG", nil, "link", n0, tooLong)
			c.expect(t, "0", nil, "unlink", long)
			c.expect(t, "ENAMETOOLONG", nil, "unlink", tooLong)
			c.mustRun(t, "unlink", n0)
		})
		t.Run("ENAMETOOLONG/symlink-target", func(t *testing.T) {
			// symlink/03.t: a target of PATH_MAX-1 bytes is stored whole.
			target := strings.Repeat("a/", 2047) + "b"
			c.expect(t, "0", nil, "symlink", target, n0)
			c.expect(t, "4095", nil, "lstat", n0, "size")
			c.mustRun(t, "unlink", n0)
			c.expect(t, "ENAMETOOLONG", nil, "symlink", target+"c", n0)
		})
		t.Run("ENAMETOOLONG/path", func(t *testing.T) {
			// */03.t: a relative path of PATH_MAX-1 bytes through nested
			// directories works; one byte more is ENAMETOOLONG.
			comp := strings.Repeat("d", 127)
			var dirs []string
			var ops []string
			rel := ""
			for len(rel)+len(comp)+1 < unix.PathMax-1-len(comp) {
				rel = filepath.Join(rel, comp)
				dirs = append(dirs, rel)
				ops = append(ops, "mkdir", rel, "0755", ":")
			}
			c.expectIn(t, "0", nil, 0, d, ops[:len(ops)-1]...)
			name := rel + "/" + strings.Repeat("f", unix.PathMax-1-len(rel)-1)
			if len(name) != unix.PathMax-1 {
				t.Fatalf("path of %d bytes", len(name))
			}
			c.expectIn(t, "0", nil, 0, d, "create", name, "0644")
			c.expectIn(t, "regular,0644", nil, 0, d, "stat", name, "type,mode")
			c.expectIn(t, "0", nil, 0, d, "rename", name, "n0", ":", "rename", "n0", name)
			c.expectIn(t, "ENAMETOOLONG", nil, 0, d, "create", name+"x", "0644")
			c.expectIn(t, "ENAMETOOLONG", nil, 0, d, "rename", name, name+"x")
			c.expectIn(t, "0", nil, 0, d, "unlink", name)
			ops = ops[:0]
			for i := len(dirs) - 1; i >= 0; i-- {
				ops = append(ops, "rmdir", dirs[i], ":")
			}
			c.expectIn(t, "0", nil, 0, d, ops[:len(ops)-1]...)
		})
		t.Run("ELOOP", func(t *testing.T) {
			c.mustRun(t, "symlink", n0, n1)
			c.mustRun(t, "symlink", n1, n0)
			c.expect(t, "ELOOP", nil, "open", n0, "O_RDONLY")
			c.expect(t, "ELOOP", nil, "stat", filepath.Join(n0, "x"), "type")
			c.expect(t, "ELOOP", nil, "mkdir", filepath.Join(n1, "x"), "0755")
			c.expect(t, "ELOOP", nil, "chmod", n0, "0644")
			c.expect(t, "ELOOP", nil, "truncate", n0, "0")
			c.expect(t, "ELOOP", nil, "open", n0, "O_CREAT,O_WRONLY", "0644")
			c.expect(t, "ELOOP", nil, "open", n1, "O_RDONLY,O_NOFOLLOW")
			c.mustRun(t, "unlink", n0)
			c.mustRun(t, "unlink", n1)
		})
	})
}

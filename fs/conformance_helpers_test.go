package fs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// This file is a small pjdfstest: the conformance tests in
// conformance_test.go express each case as pjdfstest does,
//
//	expect 0777 -u 65534 -g 65534 open n0 O_WRONLY : write 0 x : fstat 0 mode
//
// and run its operations either in this process (as root, umask 0: Mount
// sets it) or in a child process — the test binary again, with the
// operations after "--" — under another user, group list and umask.

// opsStep is the step that runs conformance operations in a process of
// its own (fusetest.Steps): args are the umask (octal), the working
// directory ("" for /) and the operations. It prints one result per
// operation, stopping at the first error.
func opsStep(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("ops: want UMASK WD OPS..., got %q", args)
	}
	m, err := strconv.ParseUint(args[0], 8, 32)
	if err != nil {
		return fmt.Errorf("ops: umask %q: %w", args[0], err)
	}
	unix.Umask(int(m))
	if args[1] != "" {
		if err := os.Chdir(args[1]); err != nil {
			return fmt.Errorf("ops: %w", err)
		}
	}
	fmt.Println(strings.Join(runOps(args[2:]), "\n"))
	return nil
}

// cred is who runs an operation: root (nil) or a user with a group list
// whose first entry is the effective group, as pjdfstest's -u and -g.
type cred struct {
	uid    uint32
	groups []uint32
}

func user(uid uint32, groups ...uint32) *cred { return &cred{uid: uid, groups: groups} }

// nobody is pjdfstest's usual "-u 65534 -g 65534".
var nobody = user(65534, 65534)

func (c *cred) String() string {
	if c == nil {
		return "root"
	}
	g := make([]string, len(c.groups))
	for i, id := range c.groups {
		g[i] = strconv.Itoa(int(id))
	}
	return fmt.Sprintf("-u %d -g %s", c.uid, strings.Join(g, ","))
}

// conf is one mount prepared for the conformance cases.
type conf struct {
	m   *fusetest.InProcess
	seq atomic.Int64 // names the directories dir makes; cases may run in parallel
}

// inBothNameModes runs test, in parallel, with names in the clear and
// with names encrypted (withNames), given the mount options of each.
func inBothNameModes(t *testing.T, test func(t *testing.T, o kfs.Options)) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted-names=%v", encrypted), func(t *testing.T) {
			t.Parallel()
			o := kfs.Options{Xattr: true}
			if encrypted {
				o = withNames(t, o)
			}
			test(t, o)
		})
	}
}

// newConf mounts a volume, with the options o, that users other than
// root can reach.
func newConf(t *testing.T, o kfs.Options) *conf {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("conformance cases run as root, like pjdfstest")
	}
	m := fusetest.MountFS(t, 4096, o)
	// t.TempDir makes 0700 directories: open the way to the mount.
	for _, d := range []string{filepath.Dir(m.Dir), m.Dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &conf{m: m}
}

// newConfDir is newConf with a fresh directory (see dir) and the paths of
// pjdfstest's names n0, n1 and n2 in it.
func newConfDir(t *testing.T, o kfs.Options) (c *conf, d, n0, n1, n2 string) {
	t.Helper()
	c = newConf(t, o)
	d = c.dir(t)
	return c, d, filepath.Join(d, "n0"), filepath.Join(d, "n1"), filepath.Join(d, "n2")
}

// dir makes a fresh 0755 directory in the mount (as pjdfstest's
// "expect 0 mkdir n 0755; cd n") and returns its path.
func (c *conf) dir(t *testing.T) string {
	t.Helper()
	return c.dirOwned(t, "0", "0")
}

// dirOwned is dir for a directory owned by uid and gid.
func (c *conf) dirOwned(t *testing.T, uid, gid string) string {
	t.Helper()
	d := filepath.Join(c.m.Dir, fmt.Sprintf("w%d", c.seq.Add(1)))
	c.mkdirAs(t, d, "0755", uid, gid)
	return d
}

// mkdirAs makes a directory with the given mode, owned by uid and gid. It
// is made by that user (in a parent opened to all for the moment) rather
// than chowned: the setup does not rely on chown(2) of directories, which
// TestConformanceChown checks on its own.
func (c *conf) mkdirAs(t *testing.T, path, mode, uid, gid string) {
	t.Helper()
	if uid == "0" && gid == "0" {
		c.mustRun(t, "mkdir", path, mode)
		return
	}
	parent := filepath.Dir(path)
	pm := c.lstat(t, parent).Mode & 07777
	c.mustRun(t, "chmod", parent, fmt.Sprintf("0%o", pm|0o777))
	who := user(uint32(num(uid)), uint32(num(gid)))
	if got := c.run(t, who, "mkdir", path, mode); got != "0" {
		t.Fatalf("setup %s mkdir %s: %s", who, c.short([]string{path}), got)
	}
	c.mustRun(t, "chmod", parent, fmt.Sprintf("0%o", pm))
	c.mustRun(t, "chmod", path, mode)
}

// run runs the operations (separated by ":") as who with umask 0 and
// returns the last result, as pjdfstest's expect sees it.
func (c *conf) run(t *testing.T, who *cred, args ...string) string {
	t.Helper()
	return c.runIn(t, who, 0, "", args...)
}

// runIn is run with a umask and a working directory (for relative paths).
func (c *conf) runIn(t *testing.T, who *cred, umask int, wd string, args ...string) string {
	t.Helper()
	var out []string
	if who == nil && umask == 0 && wd == "" {
		out = runOps(args)
	} else {
		var cred *syscall.Credential
		if who != nil {
			cred = &syscall.Credential{Uid: who.uid, Gid: who.groups[0], Groups: who.groups}
		}
		b := suite.User(t, cred).Must(t, append([]string{"ops", fmt.Sprintf("%o", umask), wd}, args...)...)
		out = strings.Split(strings.TrimRight(b, "\n"), "\n")
	}
	return out[len(out)-1]
}

// expect checks the last result of the operations against want, a regular
// expression matched against the whole result (pjdfstest's "EACCES|EPERM",
// "65534,6553[34]").
func (c *conf) expect(t *testing.T, want string, who *cred, args ...string) {
	t.Helper()
	c.expectIn(t, want, who, 0, "", args...)
}

func (c *conf) expectIn(t *testing.T, want string, who *cred, umask int, wd string, args ...string) {
	t.Helper()
	got := c.runIn(t, who, umask, wd, args...)
	if !regexp.MustCompile("^(" + want + ")$").MatchString(got) {
		t.Errorf("expect %s %s %s: got %s", want, who, c.short(args), got)
	}
}

// short strips the mount prefix from paths in messages.
func (c *conf) short(args []string) string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = strings.TrimPrefix(a, c.m.Dir+"/")
	}
	return strings.Join(s, " ")
}

// mustRun runs operations as root and fails the test unless they succeed.
func (c *conf) mustRun(t *testing.T, args ...string) {
	t.Helper()
	if got := c.run(t, nil, args...); got != "0" {
		t.Fatalf("setup %s: %s", c.short(args), got)
	}
}

// createFile makes an object of the given pjdfstest type as root, then
// (optionally) sets its mode and owner: pjdfstest's create_file. A
// directory with an owner is made by that owner (see mkdirAs).
func (c *conf) createFile(t *testing.T, typ, path string, modeUIDGID ...string) {
	t.Helper()
	switch typ {
	case "none":
		return
	case "regular":
		c.mustRun(t, "create", path, "0644")
	case "dir":
		switch len(modeUIDGID) {
		case 3:
			c.mkdirAs(t, path, modeUIDGID[0], modeUIDGID[1], modeUIDGID[2])
			return
		case 2:
			c.mkdirAs(t, path, "0755", modeUIDGID[0], modeUIDGID[1])
			return
		}
		c.mustRun(t, "mkdir", path, "0755")
	case "fifo":
		c.mustRun(t, "mkfifo", path, "0644")
	case "block":
		c.mustRun(t, "mknod", path, "b", "0644", "1", "2")
	case "char":
		c.mustRun(t, "mknod", path, "c", "0644", "1", "2")
	case "socket":
		c.mustRun(t, "bind", path)
	case "symlink":
		c.mustRun(t, "symlink", "test", path)
	default:
		t.Fatalf("type %q", typ)
	}
	switch len(modeUIDGID) {
	case 3:
		if typ != "symlink" {
			c.mustRun(t, "chmod", path, modeUIDGID[0])
		}
		c.mustRun(t, "lchown", path, modeUIDGID[1], modeUIDGID[2])
	case 2:
		c.mustRun(t, "lchown", path, modeUIDGID[0], modeUIDGID[1])
	case 1:
		if typ != "symlink" {
			c.mustRun(t, "chmod", path, modeUIDGID[0])
		}
	}
}

// remove removes an object of the given type as root.
func (c *conf) remove(t *testing.T, typ, path string) {
	t.Helper()
	switch typ {
	case "none":
	case "dir":
		c.mustRun(t, "rmdir", path)
	default:
		c.mustRun(t, "unlink", path)
	}
}

// lstat returns the attributes the mount reports for path.
func (c *conf) lstat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("lstat %s: %v", c.short([]string{path}), err)
	}
	return st
}

// setPast sets path's atime and mtime (not following links) to a fixed
// past time, so that a later change shows as a move forward.
func (c *conf) setPast(t *testing.T, path string) {
	t.Helper()
	ts := []unix.Timespec{{Sec: pastSec}, {Sec: pastSec}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("utimensat %s: %v", c.short([]string{path}), err)
	}
}

// pastSec is 2001-09-09: well before any test runs.
const pastSec = 1000000000

func nsec(ts unix.Timespec) int64 { return ts.Sec*1e9 + ts.Nsec }

// --- the operations, after pjdfstest.c ---

// runOps runs operations separated by ":" and returns one result per
// operation run, stopping after the first that fails. Descriptors opened
// by "open" are numbered from 0 and closed at the end.
func runOps(args []string) []string {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	var out []string
	for len(args) > 0 {
		n := 0
		for n < len(args) && args[n] != ":" {
			n++
		}
		res := runOp(args[:n], &fds)
		out = append(out, res)
		if n == len(args) || isErrnoName(res) {
			break
		}
		args = args[n+1:]
	}
	return out
}

func isErrnoName(s string) bool { return len(s) > 1 && s[0] == 'E' && strings.ToUpper(s) == s }

func errnoName(err error) string {
	if err == nil {
		return "0"
	}
	if e, ok := err.(syscall.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return strings.ToUpper(n)
		}
	}
	return "E" + err.Error()
}

func num(s string) int64 {
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		panic(fmt.Sprintf("number %q: %v", s, err))
	}
	return n
}

func mode(s string) uint32 { return uint32(num(s)) }

var openFlags = map[string]int{
	"O_RDONLY": unix.O_RDONLY, "O_WRONLY": unix.O_WRONLY, "O_RDWR": unix.O_RDWR,
	"O_CREAT": unix.O_CREAT, "O_EXCL": unix.O_EXCL, "O_TRUNC": unix.O_TRUNC,
	"O_APPEND": unix.O_APPEND, "O_NOFOLLOW": unix.O_NOFOLLOW, "O_DIRECTORY": unix.O_DIRECTORY,
	"O_NONBLOCK": unix.O_NONBLOCK,
}

func flags(s string) int {
	f := 0
	for _, name := range strings.Split(s, ",") {
		v, ok := openFlags[name]
		if !ok {
			panic("flag " + name)
		}
		f |= v
	}
	return f
}

// timespec parses a utimensat time: seconds and nanoseconds, where the
// nanoseconds may be UTIME_NOW or UTIME_OMIT.
func timespec(sec, ns string) unix.Timespec {
	switch ns {
	case "UTIME_NOW":
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	case "UTIME_OMIT":
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.Timespec{Sec: num(sec), Nsec: num(ns)}
}

func runOp(a []string, fds *[]int) string {
	fd := func(s string) int { return (*fds)[num(s)] }
	switch a[0] {
	case "create":
		f, err := unix.Open(a[1], unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, mode(a[2]))
		if err == nil {
			unix.Close(f)
		}
		return errnoName(err)
	case "open":
		m := uint32(0)
		if len(a) > 3 {
			m = mode(a[3])
		}
		f, err := unix.Open(a[1], flags(a[2]), m)
		if err == nil {
			*fds = append(*fds, f)
		}
		return errnoName(err)
	case "write":
		_, err := unix.Write(fd(a[1]), []byte(a[2]))
		return errnoName(err)
	case "ftruncate":
		return errnoName(unix.Ftruncate(fd(a[1]), num(a[2])))
	case "posix_fallocate":
		return errnoName(unix.Fallocate(fd(a[1]), 0, num(a[2]), num(a[3])))
	case "fchmod":
		return errnoName(unix.Fchmod(fd(a[1]), mode(a[2])))
	case "fchown":
		return errnoName(unix.Fchown(fd(a[1]), int(num(a[2])), int(num(a[3]))))
	case "mkdir":
		return errnoName(unix.Mkdir(a[1], mode(a[2])))
	case "mkfifo":
		return errnoName(unix.Mkfifo(a[1], mode(a[2])))
	case "mknod":
		types := map[string]uint32{"f": unix.S_IFIFO, "c": unix.S_IFCHR, "b": unix.S_IFBLK, "s": unix.S_IFSOCK}
		dev := unix.Mkdev(uint32(num(a[4])), uint32(num(a[5])))
		return errnoName(unix.Mknod(a[1], types[a[2]]|mode(a[3]), int(dev)))
	case "bind":
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return errnoName(err)
		}
		defer unix.Close(s)
		return errnoName(unix.Bind(s, &unix.SockaddrUnix{Name: a[1]}))
	case "symlink":
		return errnoName(unix.Symlink(a[1], a[2]))
	case "link":
		return errnoName(unix.Link(a[1], a[2]))
	case "rename":
		return errnoName(unix.Rename(a[1], a[2]))
	case "unlink":
		return errnoName(unix.Unlink(a[1]))
	case "rmdir":
		return errnoName(unix.Rmdir(a[1]))
	case "chmod":
		return errnoName(unix.Chmod(a[1], mode(a[2])))
	case "chown":
		return errnoName(unix.Chown(a[1], int(num(a[2])), int(num(a[3]))))
	case "lchown":
		return errnoName(unix.Lchown(a[1], int(num(a[2])), int(num(a[3]))))
	case "truncate":
		return errnoName(unix.Truncate(a[1], num(a[2])))
	case "utimensat": // path atime atime_ns mtime mtime_ns flags
		fl := 0
		if a[6] == "AT_SYMLINK_NOFOLLOW" {
			fl = unix.AT_SYMLINK_NOFOLLOW
		}
		ts := []unix.Timespec{timespec(a[2], a[3]), timespec(a[4], a[5])}
		return errnoName(unix.UtimesNanoAt(unix.AT_FDCWD, a[1], ts, fl))
	case "stat", "lstat", "fstat":
		var st unix.Stat_t
		var err error
		switch a[0] {
		case "stat":
			err = unix.Stat(a[1], &st)
		case "lstat":
			err = unix.Lstat(a[1], &st)
		default:
			err = unix.Fstat(fd(a[1]), &st)
		}
		if err != nil {
			return errnoName(err)
		}
		return statFields(&st, a[2])
	}
	panic("operation " + a[0])
}

// statFields formats the comma-separated stat fields as pjdfstest does.
func statFields(st *unix.Stat_t, fields string) string {
	var out []string
	for _, f := range strings.Split(fields, ",") {
		var v string
		switch f {
		case "type":
			v = map[uint32]string{
				unix.S_IFREG: "regular", unix.S_IFDIR: "dir", unix.S_IFIFO: "fifo",
				unix.S_IFBLK: "block", unix.S_IFCHR: "char", unix.S_IFSOCK: "socket",
				unix.S_IFLNK: "symlink",
			}[st.Mode&unix.S_IFMT]
		case "mode":
			v = fmt.Sprintf("0%o", st.Mode&07777)
		case "inode":
			v = strconv.FormatUint(st.Ino, 10)
		case "nlink":
			v = strconv.FormatUint(uint64(st.Nlink), 10)
		case "uid":
			v = strconv.Itoa(int(st.Uid))
		case "gid":
			v = strconv.Itoa(int(st.Gid))
		case "size":
			v = strconv.FormatInt(st.Size, 10)
		case "major":
			v = strconv.Itoa(int(unix.Major(st.Rdev)))
		case "minor":
			v = strconv.Itoa(int(unix.Minor(st.Rdev)))
		case "atime":
			v = strconv.FormatInt(st.Atim.Sec, 10)
		case "mtime":
			v = strconv.FormatInt(st.Mtim.Sec, 10)
		case "ctime":
			v = strconv.FormatInt(st.Ctim.Sec, 10)
		case "atime_ns":
			v = strconv.FormatInt(st.Atim.Nsec, 10)
		case "mtime_ns":
			v = strconv.FormatInt(st.Mtim.Nsec, 10)
		default:
			panic("stat field " + f)
		}
		out = append(out, v)
	}
	return strings.Join(out, ",")
}

package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/internal/mountinfo"
)

// Bounds on waiting for the kmsfs binary and its mount daemon.
const (
	mntCmdTimeout  = 60 * time.Second // one kmsfs command (init, mount, unmount)
	mntExitTimeout = 10 * time.Second // unmount until the daemon has exited
	mntPollPause   = 5 * time.Millisecond
	mntNobody      = 65534 // uid and gid of nobody/nogroup
)

// mntNobodyCred runs a process as nobody:nogroup, without root's groups.
func mntNobodyCred() *syscall.Credential {
	return &syscall.Credential{Uid: mntNobody, Gid: mntNobody, Groups: []uint32{}}
}

// mntOptions say how mntNew makes a volume.
type mntOptions struct {
	// Keys are the --key specs of kmsfs init; none means a fresh local
	// key file.
	Keys []string
	// InitArgs and MountArgs are extra flags of kmsfs init and mount.
	InitArgs, MountArgs []string
	// Env is added to the environment of every kmsfs command. mntNew
	// adds KMSFS_TRUST_DIR, a trust dir of the test's own, unless Env
	// names one.
	Env []string
	// Cred runs every kmsfs command as this user; the cipher dir, mount
	// point, log file and key file are given to that user. nil runs them
	// as the test.
	Cred *syscall.Credential
	// Dir holds the cipher dir, mount point, log file and key file; ""
	// means a fresh t.TempDir(). Cred and other users need one they can
	// enter (mntSharedDir).
	Dir string
}

// mntVolume is a cipher dir made by `kmsfs init` and the mount point
// where `kmsfs mount` shows it. Its cleanup unmounts (bounded) and, when
// the test failed, prints the mount daemon's log.
type mntVolume struct {
	t   testing.TB // the test that made it: its cleanup reports there
	bin string
	o   mntOptions
	volFiles
	pid int // the mount daemon while mounted, else 0
}

// volFiles are the paths of a test volume, mntVolume's or ftVolume's.
type volFiles struct {
	Cipher string // the cipher dir
	Mnt    string // the mount point
	Log    string // the mount daemon's --log-file, appended by every mount
	Key    string // the local key file, if the volume's constructor made one
}

// path returns the mount's path of a slash-separated name.
func (f *volFiles) path(name string) string { return filepath.Join(f.Mnt, filepath.FromSlash(name)) }

// cipherPath returns the cipher dir's path of a slash-separated name.
func (f *volFiles) cipherPath(name string) string {
	return filepath.Join(f.Cipher, filepath.FromSlash(name))
}

// logText returns the mount daemon's log.
func (f *volFiles) logText() string {
	b, err := os.ReadFile(f.Log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// logIfFailed prints the mount daemon's log if t failed: the last step of
// a volume's cleanup.
func (f *volFiles) logIfFailed(t testing.TB) {
	if t.Failed() {
		t.Logf("kmsfs log %s:\n%s", f.Log, f.logText())
	}
}

// mntInitArgs returns the arguments of `kmsfs init` for cipher: a --key
// for each of keys, then extra.
func mntInitArgs(keys, extra []string, cipher string) []string {
	args := []string{"init"}
	for _, k := range keys {
		args = append(args, "--key", k)
	}
	return append(append(args, extra...), cipher)
}

// mntNew inits a volume with the kmsfs binary; it does not mount it.
func mntNew(t testing.TB, o mntOptions) *mntVolume {
	t.Helper()
	bin := needBinary(t)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	v := &mntVolume{t: t, bin: bin, o: o, volFiles: volFiles{
		Cipher: filepath.Join(o.Dir, "cipher"), Mnt: filepath.Join(o.Dir, "plain"), Log: filepath.Join(o.Dir, "kmsfs.log")}}
	if err := os.Mkdir(v.Cipher, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{v.Cipher, v.Mnt, v.Log} {
		mntChown(t, p, o.Cred)
	}
	v.o.Env = mntTrustEnv(t, o.Dir, o.Cred, o.Env)
	if len(v.o.Keys) == 0 {
		v.Key = mntKeyFile(t, o.Dir, o.Cred)
		v.o.Keys = []string{"local:" + v.Key}
	}
	args := mntInitArgs(v.o.Keys, v.o.InitArgs, v.Cipher)
	if out, err := v.run(args...); err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(v.cleanup)
	return v
}

// mntStart inits and mounts a volume.
func mntStart(t testing.TB, o mntOptions) *mntVolume {
	t.Helper()
	v := mntNew(t, o)
	v.mount(t)
	return v
}

// run runs the kmsfs binary with the volume's user and environment and
// returns its combined output.
func (v *mntVolume) run(args ...string) (string, error) {
	return mntRunKmsfs(v.bin, v.o.Cred, v.o.Env, args...)
}

// mntRunKmsfs runs bin as cred (nil: as the test) with env added, bounded
// by mntCmdTimeout, and returns its combined output.
func mntRunKmsfs(bin string, cred *syscall.Credential, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(cmd.Env, "HOME=/")
	}
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (kmsfs %s did not finish within %v)", err, args[0], mntCmdTimeout)
	}
	return string(out), err
}

// mount runs `kmsfs mount`, which must return only once the mount is
// ready, and finds the daemon it left running. Methods of mntVolume that
// take a t report to it: the test or subtest that calls them.
func (v *mntVolume) mount(t testing.TB, extra ...string) {
	t.Helper()
	if out, err := v.tryMount(t, extra...); err != nil {
		t.Fatalf("kmsfs mount: %v\n%s\nlog:\n%s", err, out, v.logText())
	}
}

// tryMount is mount that returns the command's failure instead.
func (v *mntVolume) tryMount(t testing.TB, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"mount", "--log-file", v.Log}, v.o.MountArgs...)
	args = append(append(args, extra...), v.Cipher, v.Mnt)
	out, err := v.run(args...)
	if err != nil {
		return out, err
	}
	if !mntIsMounted(t, v.Mnt) {
		t.Fatalf("kmsfs mount returned success before %s was mounted", v.Mnt)
	}
	if v.pid = mntDaemon(v.Mnt); v.pid == 0 {
		t.Fatalf("kmsfs mount returned, but no mount daemon for %s is running", v.Mnt)
	}
	return out, nil
}

// unmount runs `kmsfs unmount` and waits, bounded, until the mount is gone
// and its daemon has exited.
func (v *mntVolume) unmount(t testing.TB) {
	t.Helper()
	if err := v.tryUnmount(t); err != nil {
		t.Fatal(err)
	}
}

func (v *mntVolume) tryUnmount(t testing.TB) error {
	if out, err := v.run("unmount", v.Mnt); err != nil {
		return fmt.Errorf("kmsfs unmount %s: %v\n%s", v.Mnt, err, out)
	}
	pid := v.pid
	v.pid = 0
	if !mntPoll(mntExitTimeout, func() bool { return !mntIsMounted(t, v.Mnt) && mntExited(pid) }) {
		return fmt.Errorf("%s still mounted or its daemon (pid %d) still running %v after kmsfs unmount", v.Mnt, pid, mntExitTimeout)
	}
	return nil
}

// remount unmounts and mounts again: what is read afterwards comes from
// the cipher dir, not from any cache.
func (v *mntVolume) remount(t testing.TB, extra ...string) {
	t.Helper()
	v.unmount(t)
	v.mount(t, extra...)
}

// cleanup unmounts a volume still mounted; if that fails, it detaches the
// mount and kills the daemon it started, and fails the test.
func (v *mntVolume) cleanup() {
	if v.pid != 0 {
		pid := v.pid
		if err := v.tryUnmount(v.t); err != nil {
			v.t.Errorf("cleanup: %v", err)
			mntForceUnmount(v.Mnt)
			if !mntExited(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	v.logIfFailed(v.t)
}

// trustDirEnv is the variable that points kmsfs at a trust dir.
const trustDirEnv = "KMSFS_TRUST_DIR"

// mntTrustEnv returns env with KMSFS_TRUST_DIR set to a new trust dir
// in dir, private to cred (nil: to the test), unless env sets it already:
// no test approves volumes in the host's own trust dir.
func mntTrustEnv(t testing.TB, dir string, cred *syscall.Credential, env []string) []string {
	t.Helper()
	for _, e := range env {
		if strings.HasPrefix(e, trustDirEnv+"=") {
			return env
		}
	}
	td := filepath.Join(dir, "trust")
	if err := os.Mkdir(td, 0o700); err != nil {
		t.Fatal(err)
	}
	mntChown(t, td, cred)
	return append(slices.Clone(env), trustDirEnv+"="+td)
}

// mntKeyFile writes a fresh 32-byte local key file into dir, private to
// cred (nil: to the test).
func mntKeyFile(t testing.TB, dir string, cred *syscall.Credential) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	f, err := os.CreateTemp(dir, "local-*.key")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(key)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	mntChown(t, f.Name(), cred)
	return f.Name()
}

// mntChown gives path to cred's user and group; nil leaves it alone.
func mntChown(t testing.TB, path string, cred *syscall.Credential) {
	t.Helper()
	if cred == nil {
		return
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
}

// mntSharedDir returns a new directory that every user may enter (t.TempDir
// is private to the test's user), removed when the test ends.
func mntSharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsfs-mnt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mntAWSEnv is the environment that points a kmsfs process at e.
func mntAWSEnv(e *kmstest.Emulator) []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + e.Endpoint,
		"AWS_REGION=" + e.Region,
		"AWS_ACCESS_KEY_ID=AKIDKMSFSTEST",
		"AWS_SECRET_ACCESS_KEY=kmsfs-test-secret",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// mntIsMounted reports whether path is a mount point in this mount
// namespace.
func mntIsMounted(t testing.TB, path string) bool {
	t.Helper()
	_, ok := mntMountInfo(t, path)
	return ok
}

// mntMountInfo returns the mountinfo line of the mount at path, split
// into fields (ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE
// SOURCE SUPEROPTIONS), and whether there is one.
func mntMountInfo(t testing.TB, path string) ([]string, bool) {
	t.Helper()
	m, ok, err := mountinfo.Lookup(path)
	if err != nil {
		t.Fatal(err)
	}
	return m.Fields, ok
}

// mntPoll polls cond, mntPollPause apart, until it holds or timeout has
// passed, and returns whether it held.
func mntPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(mntPollPause) // between bounded checks
	}
	return true
}

// mntDaemon returns the pid of the running kmsfs mount daemon serving
// mnt, or 0: the background child runs `kmsfs mount … --foreground` with
// the mount point among its arguments.
func mntDaemon(mnt string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || mntExited(pid) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if slices.Contains(args, "mount") && slices.Contains(args, "--foreground") && slices.Contains(args, mnt) {
			return pid
		}
	}
	return 0
}

// mntExited reports whether process pid is gone or a zombie (the daemon
// is a session leader nobody may reap here).
func mntExited(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(raw, ')')
	return i < 0 || i+2 >= len(raw) || raw[i+2] == 'Z' || raw[i+2] == 'X'
}

// daemonHolds returns the daemon's open descriptors that point into
// the cipher dir at name (slash-separated, relative to the cipher dir).
func (v *mntVolume) daemonHolds(t testing.TB, name string) []string {
	t.Helper()
	held, err := mntHolds(v.pid, v.cipherPath(name))
	if err != nil {
		t.Fatalf("daemon descriptors: %v", err)
	}
	return held
}

// mntHolds returns the descriptors of process pid open on target (which
// may since have been deleted).
func mntHolds(pid int, target string) ([]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var held []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && (l == target || l == target+" (deleted)") {
			held = append(held, e.Name())
		}
	}
	return held, nil
}

// mntCipherLeaks walks a cipher dir and returns the regular files that
// contain secret.
func mntCipherLeaks(t testing.TB, cipher string, secret []byte) []string {
	t.Helper()
	var leaks []string
	err := filepath.WalkDir(cipher, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(raw, secret) {
			leaks = append(leaks, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return leaks
}

// mntErrno returns the errno inside err, or 0.
func mntErrno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// mntWantErrno fails the test unless err carries want.
func mntWantErrno(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if got := mntErrno(err); got != want {
		t.Fatalf("%s: got error %v, want %v (%s)", what, err, want, unix.ErrnoName(want))
	}
}

// waitReleased waits, bounded, until the daemon holds no descriptor of
// the cipher file at name: the kernel sends RELEASE after close(2)
// returns, so a test that needs the file closed in the daemon waits here.
func (v *mntVolume) waitReleased(t testing.TB, name string) {
	t.Helper()
	if !mntPoll(mntExitTimeout, func() bool { return len(v.daemonHolds(t, name)) == 0 }) {
		t.Fatalf("the mount daemon still holds %s open %v after it was closed", name, mntExitTimeout)
	}
}

// mntForceUnmount is the last resort of a cleanup: MNT_FORCE aborts the
// FUSE connection (freeing a daemon stuck on a request to itself), then
// the mount is removed, lazily if it is still busy.
func mntForceUnmount(mnt string) {
	unix.Unmount(mnt, unix.MNT_FORCE)
	if unix.Unmount(mnt, 0) != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
	}
}

package fusetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// Bounds on waiting for the kmsfs binary and its mount daemon.
const (
	// CmdTimeout bounds one kmsfs command (init, mount, unmount, trust).
	CmdTimeout = 60 * time.Second
	// ExitTimeout bounds an unmount until the daemon has exited, and a
	// killed daemon's exit.
	ExitTimeout = 10 * time.Second
	// readyTimeout bounds `kmsfs mount -f` until it logs "mounted".
	readyTimeout = 30 * time.Second
	// refusedWithin is how long a refused `kmsfs mount` may take: a
	// refusal that first waits out a timeout is a bug of its own.
	refusedWithin = 20 * time.Second
)

// TrustDirEnv is the variable that points kmsfs at a trust dir.
const TrustDirEnv = "KMSFS_TRUST_DIR"

// BuildKmsfs builds cmd/kmsfs of the module holding the working directory
// into a new directory every user may enter (tests run it as other users
// too) and returns the binary's path; the caller removes its directory.
func BuildKmsfs() (string, error) {
	dir, err := os.MkdirTemp("", "kmsfs-fusetest-bin-")
	if err != nil {
		return "", fmt.Errorf("fusetest: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("fusetest: %w", err)
	}
	bin := filepath.Join(dir, "kmsfs")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kmsfs/kmsfs/cmd/kmsfs").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("fusetest: go build kmsfs: %v: %s", err, out)
	}
	return bin, nil
}

// RunKmsfs runs bin as cred (nil: as the test) with env added to the
// test's environment, bounded by CmdTimeout, and returns its combined
// output.
func RunKmsfs(bin string, cred *syscall.Credential, env []string, args ...string) (string, error) {
	return runKmsfsWithin(CmdTimeout, bin, cred, env, args...)
}

// runKmsfsWithin is RunKmsfs bounded by bound.
func runKmsfsWithin(bound time.Duration, bin string, cred *syscall.Credential, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := kmsfsCommand(ctx, bin, cred, env, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (kmsfs %s did not finish within %v)", err, args[0], bound)
	}
	return string(out), err
}

// kmsfsCommand returns the process that runs bin as cred (nil: as the
// test, with the test's HOME) with env added to the test's environment.
func kmsfsCommand(ctx context.Context, bin string, cred *syscall.Credential, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if cred != nil {
		cmd.Env = append(cmd.Env, "HOME=/")
	}
	return cmd
}

// InitArgs returns the arguments of `kmsfs init` for cipher: a --key for
// each of keys, then extra.
func InitArgs(keys, extra []string, cipher string) []string {
	args := []string{"init"}
	for _, k := range keys {
		args = append(args, "--key", k)
	}
	return append(append(args, extra...), cipher)
}

// CLIOptions say how Suite.InitVolume makes a volume.
type CLIOptions struct {
	// Keys are the --key specs of kmsfs init; none means a fresh local
	// key file.
	Keys []string
	// InitArgs and MountArgs are extra flags of kmsfs init and mount.
	InitArgs, MountArgs []string
	// Env is added to the environment of every kmsfs process. A trust
	// dir of the volume's own is added unless Env names one
	// (TrustDirEnv): no test approves volumes in the host's trust dir.
	Env []string
	// Cred runs every kmsfs process as this user; the cipher dir, mount
	// point, log file, trust dir and key file are given to that user. nil
	// runs them as the test.
	Cred *syscall.Credential
	// Dir holds the cipher dir, mount point, log, trust dir and key file;
	// "" means a fresh t.TempDir(). Other users need one they can enter
	// (SharedDir).
	Dir string
	// Cipher is an existing empty directory to init as the cipher dir (a
	// tmpfs, say); "" makes Dir/cipher.
	Cipher string
}

// CLIVolume is a cipher dir made by `kmsfs init` and, while mounted, the
// kmsfs process that serves it: the daemon `kmsfs mount` leaves behind
// (Mount), or a `kmsfs mount -f` the test started itself (MountForeground),
// which it can stop with a signal. Its cleanup unmounts (bounded), else
// detaches the mount and kills the process, and prints the log when the
// test failed. A CLIVolume belongs to one test goroutine.
type CLIVolume struct {
	Dir    string // holds the mount point, the log and, by default, the rest
	Cipher string // the cipher dir
	Mnt    string // the mount point
	// Log is the mount's log: the daemon's --log-file, or what a
	// foreground process writes to stdout and stderr; every mount appends.
	Log string
	Key string // the local key file, if the volume made one
	// Env is added to the environment of every kmsfs process of the
	// volume (with the trust dir); a test may add to it.
	Env []string

	t          testing.TB // the test that made it: its cleanup reports there
	bin        string
	o          CLIOptions
	pid        int         // the serving process while mounted, else 0
	fg         *foreground // the foreground process while it runs, else nil
	foreground bool        // how the last mount was made, for Remount
}

// foreground is one running `kmsfs mount -f`.
type foreground struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process is reaped
	err  error         // its exit status, valid after done
	mark int64         // the log's length when it started
}

func (p *foreground) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// newCLIVolume inits a volume with bin; it does not mount it.
func newCLIVolume(t testing.TB, bin string, o CLIOptions) *CLIVolume {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	v := &CLIVolume{t: t, bin: bin, o: o, Dir: o.Dir, Cipher: o.Cipher,
		Mnt: filepath.Join(o.Dir, "plain"), Log: filepath.Join(o.Dir, "kmsfs.log")}
	if v.Cipher == "" {
		v.Cipher = filepath.Join(o.Dir, "cipher")
		if err := os.Mkdir(v.Cipher, 0o700); err != nil {
			t.Fatal(err)
		}
		Chown(t, v.Cipher, o.Cred)
	}
	if err := os.Mkdir(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	Chown(t, v.Mnt, o.Cred)
	Chown(t, v.Log, o.Cred)
	v.Env = TrustEnv(t, o.Dir, o.Cred, o.Env)
	if len(v.o.Keys) == 0 {
		v.Key = KeyFile(t, o.Dir, o.Cred)
		v.o.Keys = []string{"local:" + v.Key}
	}
	args := InitArgs(v.o.Keys, v.o.InitArgs, v.Cipher)
	if out, err := v.Run(args...); err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(v.cleanup)
	return v
}

// Kmsfs returns the kmsfs binary the volume runs.
func (v *CLIVolume) Kmsfs() string { return v.bin }

// Cred returns the user the volume's kmsfs processes run as (nil: the
// test's).
func (v *CLIVolume) Cred() *syscall.Credential { return v.o.Cred }

// Path returns the mount's path of a slash-separated name.
func (v *CLIVolume) Path(name string) string { return filepath.Join(v.Mnt, filepath.FromSlash(name)) }

// CipherPath returns the cipher dir's path of a slash-separated name.
func (v *CLIVolume) CipherPath(name string) string {
	return filepath.Join(v.Cipher, filepath.FromSlash(name))
}

// MountedCipherPath returns the cipher file behind the slash-separated
// name as the mount serves it, found component by component by inode
// (volume.Info), so that it works with encrypted names, where CipherPath
// cannot know the stored names. The volume must be mounted.
func (v *CLIVolume) MountedCipherPath(name string) (string, error) {
	fi, err := volume.Info(v.Path(name))
	if err != nil {
		return "", fmt.Errorf("fusetest: cipher file of %s: %w", name, err)
	}
	return fi.CipherPath, nil
}

// LogText returns the mount's log.
func (v *CLIVolume) LogText() string {
	b, err := os.ReadFile(v.Log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Run runs the kmsfs binary with the volume's user and environment and
// returns its combined output.
func (v *CLIVolume) Run(args ...string) (string, error) {
	return RunKmsfs(v.bin, v.o.Cred, v.Env, args...)
}

// Command returns the kmsfs process of args with the volume's user and
// environment, then env, bounded by ctx, for a test that sets its streams
// or attributes itself (Run takes combined output).
func (v *CLIVolume) Command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	return kmsfsCommand(ctx, v.bin, v.o.Cred, append(slices.Clone(v.Env), env...), args...)
}

// PID returns the process serving the mount, or 0 when it is not mounted.
func (v *CLIVolume) PID() int { return v.pid }

// Mount runs `kmsfs mount`, which must return only once the mount is
// ready, and finds the daemon it left running. Methods that take a t
// report to it: the test or subtest that calls them.
func (v *CLIVolume) Mount(t testing.TB, extra ...string) {
	t.Helper()
	if out, err := v.TryMount(t, extra...); err != nil {
		t.Fatalf("kmsfs mount: %v\n%s\nlog:\n%s", err, out, v.LogText())
	}
}

// TryMount is Mount that returns the command's output and failure
// instead.
func (v *CLIVolume) TryMount(t testing.TB, extra ...string) (string, error) {
	t.Helper()
	out, err := v.Run(v.mountArgs(t, false, extra)...)
	if err != nil {
		return out, err
	}
	if !IsMounted(t, v.Mnt) {
		t.Fatalf("kmsfs mount returned success before %s was mounted", v.Mnt)
	}
	if v.pid = DaemonPID(v.Mnt); v.pid == 0 {
		t.Fatalf("kmsfs mount returned, but no mount daemon for %s is running", v.Mnt)
	}
	return out, nil
}

// mountArgs checks that v is not mounted and returns the arguments of
// `kmsfs mount` in the background (logging to v.Log) or in the
// foreground (-f, whose output StartForeground sends to v.Log).
func (v *CLIVolume) mountArgs(t testing.TB, foreground bool, extra []string) []string {
	t.Helper()
	NeedFUSE(t)
	if v.pid != 0 {
		t.Fatalf("fusetest: %s is mounted already", v.Mnt)
	}
	v.foreground = foreground
	args := []string{"mount", "--log-file", v.Log}
	if foreground {
		args = []string{"mount", "-f"}
	}
	args = append(append(args, v.o.MountArgs...), extra...)
	return append(args, v.Cipher, v.Mnt)
}

// MountForeground starts `kmsfs mount -f` and returns once it has logged
// "mounted" and the mount exists; it fails the test if the process exits
// first, or if the log says mounted before the mount exists.
func (v *CLIVolume) MountForeground(t testing.TB, extra ...string) {
	t.Helper()
	if err := v.TryMountForeground(t, extra...); err != nil {
		t.Fatal(err)
	}
}

// TryMountForeground is MountForeground that returns the failure (with
// what the process wrote) instead; a process that did not mount in time is
// killed.
func (v *CLIVolume) TryMountForeground(t testing.TB, extra ...string) error {
	t.Helper()
	v.StartForeground(t, extra...)
	return v.waitMounted(t)
}

// StartForeground starts `kmsfs mount -f`, writing to the log, and returns
// at once, without waiting for the mount.
func (v *CLIVolume) StartForeground(t testing.TB, extra ...string) {
	t.Helper()
	args := v.mountArgs(t, true, extra)
	logf, err := os.OpenFile(v.Log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := &foreground{done: make(chan struct{}), mark: v.LogMark()}
	p.cmd = kmsfsCommand(context.Background(), v.bin, v.o.Cred, v.Env, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr.Setpgid = true
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start kmsfs %s: %v", strings.Join(args, " "), err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	v.fg, v.pid = p, p.cmd.Process.Pid
}

// waitMounted waits, bounded, until the foreground process has logged
// "mounted"; it fails if the process exits first, or if the log says
// mounted before the mount exists, and kills a process that did not mount
// in time.
func (v *CLIVolume) waitMounted(t testing.TB) error {
	t.Helper()
	p := v.fg
	if p == nil {
		return errors.New("fusetest: no kmsfs mount -f running")
	}
	logged := func() bool {
		return v.LogHas(p.mark, func(l LogLine) bool { return l.F["msg"] == "mounted" })
	}
	Poll(readyTimeout, func() bool { return p.exited() || logged() })
	switch {
	case logged():
		if !IsMounted(t, v.Mnt) {
			return fmt.Errorf("kmsfs mount -f logged \"mounted\" before %s was mounted", v.Mnt)
		}
		return nil
	case p.exited():
		v.fg, v.pid = nil, 0
		return fmt.Errorf("kmsfs mount -f exited (%v) before mounting:\n%s", p.err, v.logSinceText(p.mark))
	default:
		v.fg, v.pid = nil, 0
		p.cmd.Process.Kill()
		<-p.done
		if IsMounted(t, v.Mnt) {
			ForceUnmount(v.Mnt)
		}
		return fmt.Errorf("kmsfs mount -f: not mounted after %v:\n%s", readyTimeout, v.logSinceText(p.mark))
	}
}

// ForegroundExited reports whether a foreground process was started and
// has exited; a test that stops one early polls it.
func (v *CLIVolume) ForegroundExited() bool { return v.fg != nil && v.fg.exited() }

// Stop sends SIGTERM to the foreground process and waits, at most within,
// for it to exit; it returns the process's exit error (nil: exit 0).
func (v *CLIVolume) Stop(t testing.TB, within time.Duration) error {
	t.Helper()
	p := v.fg
	if p == nil {
		t.Fatal("fusetest: Stop without a kmsfs mount -f running")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("kmsfs mount -f still running %v after SIGTERM (stuck on its own mount?)\n%s", within, v.logSinceText(p.mark))
	}
	v.fg, v.pid = nil, 0
	return p.err
}

// Unmount runs `kmsfs unmount` (again while the kernel still releases
// closed files and says busy) and waits, bounded, until the mount is gone
// and its process has exited; a foreground process must exit 0.
func (v *CLIVolume) Unmount(t testing.TB) {
	t.Helper()
	if err := v.TryUnmount(t); err != nil {
		t.Fatal(err)
	}
}

// TryUnmount is Unmount that returns the failure instead; it does nothing
// when the volume is not mounted.
func (v *CLIVolume) TryUnmount(t testing.TB) error {
	t.Helper()
	if v.pid == 0 {
		return nil
	}
	var out string
	var err error
	Poll(ExitTimeout, func() bool {
		out, err = v.Run("unmount", v.Mnt)
		return err == nil || !strings.Contains(out, "busy")
	})
	if err != nil {
		return fmt.Errorf("kmsfs unmount %s: %v\n%s", v.Mnt, err, out)
	}
	pid, p := v.pid, v.fg
	v.pid, v.fg = 0, nil
	gone := exitedFunc(pid, p)
	if !Poll(ExitTimeout, func() bool { return !IsMounted(t, v.Mnt) && gone() }) {
		if p != nil {
			p.cmd.Process.Kill()
			<-p.done
		}
		return fmt.Errorf("%s still mounted or its kmsfs (pid %d) still running %v after kmsfs unmount", v.Mnt, pid, ExitTimeout)
	}
	if p != nil && p.err != nil {
		return fmt.Errorf("kmsfs mount -f exited with %v after unmount:\n%s", p.err, v.logSinceText(p.mark))
	}
	return nil
}

// Remount unmounts and mounts again the way it was mounted last: what is
// read afterwards comes from the cipher dir through a fresh process.
func (v *CLIVolume) Remount(t testing.TB, extra ...string) {
	t.Helper()
	v.Unmount(t)
	if v.foreground {
		v.MountForeground(t, extra...)
		return
	}
	v.Mount(t, extra...)
}

// Kill SIGKILLs the serving process and waits, bounded, for it to exit;
// the dead mount stays until Detach.
func (v *CLIVolume) Kill(t testing.TB) {
	t.Helper()
	v.KillWith(t, syscall.SIGKILL)
}

// KillWith is Kill with another signal that ends the process (SIGQUIT, a
// Go crash with a traceback, for one).
func (v *CLIVolume) KillWith(t testing.TB, sig syscall.Signal) {
	t.Helper()
	pid, p := v.pid, v.fg
	if pid == 0 {
		t.Fatal("fusetest: Kill without a mount")
	}
	v.pid, v.fg = 0, nil
	syscall.Kill(pid, sig)
	Eventually(t, fmt.Sprintf("kmsfs (pid %d) exits on %v", pid, sig), ExitTimeout, exitedFunc(pid, p))
}

// exitedFunc returns what tells that the serving process pid has exited:
// the foreground process p's reaping when the test started it, else /proc
// (a daemon is nobody's child here).
func exitedFunc(pid int, p *foreground) func() bool {
	if p != nil {
		return p.exited
	}
	return func() bool { return Exited(pid) }
}

// Detach lazily unmounts the mount point and waits until it is gone.
func (v *CLIVolume) Detach(t testing.TB) {
	t.Helper()
	if err := unix.Unmount(v.Mnt, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
		t.Fatalf("umount -l %s: %v", v.Mnt, err)
	}
	Eventually(t, "dead mount detached", ExitTimeout, func() bool { return !IsMounted(t, v.Mnt) })
}

// MountRefused runs `kmsfs mount cipher mnt` with the volume's user and
// environment and checks that it fails with output matching every pattern
// of want, quickly, and leaves mnt unmounted with no daemon serving it
// (when mnt was not mounted before). It returns the output.
func (v *CLIVolume) MountRefused(t testing.TB, cipher, mnt string, want ...string) string {
	t.Helper()
	wasMounted := IsMounted(t, mnt)
	out, err := runKmsfsWithin(refusedWithin, v.bin, v.o.Cred, v.Env, "mount", cipher, mnt)
	if err != nil && strings.Contains(err.Error(), "did not finish within") {
		t.Errorf("kmsfs mount was not refused: %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("kmsfs mount: %v, want a non-zero exit\n%s", err, out)
	}
	for _, w := range want {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("message %q does not match %q", strings.TrimSpace(out), w)
		}
	}
	if !wasMounted && IsMounted(t, mnt) {
		t.Errorf("%s is mounted after a failed mount", mnt)
	}
	if pid := DaemonPID(mnt); pid != 0 && !wasMounted {
		t.Errorf("a kmsfs daemon (pid %d) serves %s after a failed mount", pid, mnt)
	}
	return out
}

// DaemonHolds returns the serving process's open descriptors that point
// into the cipher dir at name's backing entry (slash-separated name; one
// the mount no longer has is taken as stored in clear).
func (v *CLIVolume) DaemonHolds(t testing.TB, name string) []string {
	t.Helper()
	held, err := Holds(v.pid, v.heldPath(name))
	if err != nil {
		t.Fatalf("daemon descriptors: %v", err)
	}
	return held
}

// WaitReleased waits, bounded, until the serving process holds no
// descriptor of the cipher file at name: the kernel sends RELEASE after
// close(2) returns, and the daemon rereads a header only on a fresh open.
func (v *CLIVolume) WaitReleased(t testing.TB, name string) {
	t.Helper()
	Eventually(t, "the mount daemon releases "+name, ExitTimeout, func() bool { return len(v.DaemonHolds(t, name)) == 0 })
}

// cleanup unmounts a volume still mounted; if that fails, it detaches the
// mount, kills the process and fails the test. A killed process's dead
// mount is detached. Last, the log is printed if the test failed.
func (v *CLIVolume) cleanup() {
	if pid, p := v.pid, v.fg; pid != 0 {
		if err := v.TryUnmount(v.t); err != nil {
			v.t.Errorf("cleanup: %v", err)
			ForceUnmount(v.Mnt)
			syscall.Kill(pid, syscall.SIGKILL)
			if p != nil {
				<-p.done
			}
		}
	} else if IsMounted(v.t, v.Mnt) {
		ForceUnmount(v.Mnt)
	}
	if v.t.Failed() {
		v.t.Logf("kmsfs log %s:\n%s", v.Log, v.LogText())
	}
}

// LogLine is one line of a logrus text log, split into its fields.
type LogLine struct {
	Raw string
	F   map[string]string
}

// ParseLogLine splits `key=value key="quoted value" …`.
func ParseLogLine(s string) LogLine {
	l := LogLine{Raw: s, F: map[string]string{}}
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimLeft(s, " ") {
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			break
		}
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			val, rest, _ = strings.Cut(rest, " ")
		}
		l.F[k] = val
		s = rest
	}
	return l
}

// LogMark returns the log's current length, for LogSince.
func (v *CLIVolume) LogMark() int64 {
	fi, err := os.Stat(v.Log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns the complete lines logged after mark, parsed.
func (v *CLIVolume) LogSince(mark int64) []LogLine {
	var lines []LogLine
	for _, s := range strings.Split(v.logSinceText(mark), "\n") {
		if s != "" {
			lines = append(lines, ParseLogLine(s))
		}
	}
	return lines
}

// LogHas reports whether a line logged after mark matches.
func (v *CLIVolume) LogHas(mark int64, match func(LogLine) bool) bool {
	return slices.ContainsFunc(v.LogSince(mark), match)
}

// logSinceText returns the complete lines logged after mark.
func (v *CLIVolume) logSinceText(mark int64) string {
	b, err := os.ReadFile(v.Log)
	if err != nil || mark > int64(len(b)) {
		return ""
	}
	b = b[mark:]
	return string(b[:bytes.LastIndexByte(b, '\n')+1])
}

// TrustEnv returns env with TrustDirEnv set to a new trust dir in dir,
// private to cred (nil: to the test), unless env sets it already.
func TrustEnv(t testing.TB, dir string, cred *syscall.Credential, env []string) []string {
	t.Helper()
	for _, e := range env {
		if strings.HasPrefix(e, TrustDirEnv+"=") {
			return env
		}
	}
	td := filepath.Join(dir, "trust")
	if err := os.Mkdir(td, 0o700); err != nil {
		t.Fatal(err)
	}
	Chown(t, td, cred)
	return append(slices.Clone(env), TrustDirEnv+"="+td)
}

// KeyFile writes a fresh 32-byte local key file into dir, private to cred
// (nil: to the test), and returns its path.
func KeyFile(t testing.TB, dir string, cred *syscall.Credential) string {
	t.Helper()
	key := make([]byte, keysource.DataKeySize)
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
	Chown(t, f.Name(), cred)
	return f.Name()
}

// Chown gives path to cred's user and group; nil leaves it alone.
func Chown(t testing.TB, path string, cred *syscall.Credential) {
	t.Helper()
	if cred == nil {
		return
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
}

// SharedDir returns a new directory that every user may enter
// (t.TempDir is private to the test's user), removed when the test ends.
func SharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsfs-fusetest-")
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

// IsMounted reports whether path is a mount point in this mount
// namespace.
func IsMounted(t testing.TB, path string) bool {
	t.Helper()
	_, ok := MountInfo(t, path)
	return ok
}

// MountInfo returns the mountinfo line of the mount at path, split into
// fields (ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE
// SUPEROPTIONS), and whether there is one.
func MountInfo(t testing.TB, path string) ([]string, bool) {
	t.Helper()
	m, ok, err := mountinfo.Lookup(path)
	if err != nil {
		t.Fatal(err)
	}
	return m.Fields, ok
}

// DaemonPID returns the pid of the running kmsfs mount daemon serving
// mnt, or 0: the background child runs `kmsfs mount … --foreground` (or,
// started by mount(8), `kmsfs CIPHERDIR MOUNTPOINT -o … --foreground`)
// with the mount point among its arguments.
func DaemonPID(mnt string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || Exited(pid) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if slices.Contains(args, "--foreground") && slices.Contains(args, mnt) {
			return pid
		}
	}
	return 0
}

// Exited reports whether process pid is gone or a zombie (a daemon is a
// session leader nobody here may reap).
func Exited(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(raw, ')')
	return i < 0 || i+2 >= len(raw) || raw[i+2] == 'Z' || raw[i+2] == 'X'
}

// Holds returns the descriptors of process pid open on target (which may
// since have been deleted).
func Holds(pid int, target string) ([]string, error) {
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

// ProcUID returns the real uid of process pid from /proc/PID/status (the
// owner of /proc/PID is root for a non-dumpable process).
func ProcUID(t testing.TB, pid int) uint32 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(uid)
		}
	}
	t.Fatalf("/proc/%d/status has no Uid line", pid)
	return 0
}

// ForceUnmount is the last resort of a cleanup: MNT_FORCE aborts the FUSE
// connection (freeing a daemon stuck on a request to itself), then the
// mount is removed, lazily if it is still busy.
func ForceUnmount(mnt string) {
	unix.Unmount(mnt, unix.MNT_FORCE)
	if unix.Unmount(mnt, 0) != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
	}
}

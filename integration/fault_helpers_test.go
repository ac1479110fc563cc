package integration_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds on the fault tests' waits. Every wait polls with ftPollPause
// until its condition holds or its deadline passes.
const (
	ftCmdTimeout   = 60 * time.Second // one kmsfs init or unmount command
	ftMountTimeout = 30 * time.Second // kmsfs mount -f until it logs "mounted"
	ftExitTimeout  = 10 * time.Second // a killed or unmounted daemon until it exits
	ftPollPause    = 5 * time.Millisecond
)

// ftOptions say how ftNew makes a volume.
type ftOptions struct {
	// Keys are the --key specs of kmsfs init; none means a fresh local key
	// file.
	Keys []string
	// InitArgs and MountArgs are extra flags of kmsfs init and mount.
	InitArgs, MountArgs []string
	// Env is added to the environment of every kmsfs process.
	Env []string
	// Cipher is an existing empty directory to init as the cipher dir (a
	// tmpfs, say); "" makes one in the test's temporary directory.
	Cipher string
}

// ftVolume is a cipher dir made by `kmsfs init` and, while mounted, the
// `kmsfs mount -f` process the test started itself, so that it can kill
// it. Its cleanup unmounts (or detaches and kills) and, when the test
// failed, prints the daemon's log.
type ftVolume struct {
	t      testing.TB
	bin    string
	o      ftOptions
	Dir    string // holds the mount point, the log, the key file
	Cipher string
	Mnt    string
	Log    string // the daemon's --log-file (text format), appended by every mount
	Key    string // the local key file, if ftNew made one
	proc   *ftProc
	mounts int
}

// ftProc is one running `kmsfs mount -f`.
type ftProc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once the process is reaped
	err    error         // its exit status, valid after done
	stderr string        // file holding its stderr
}

func (p *ftProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ftNew inits a volume; it does not mount it.
func ftNew(t testing.TB, o ftOptions) *ftVolume {
	t.Helper()
	bin := needBinary(t)
	dir := t.TempDir()
	v := &ftVolume{t: t, bin: bin, o: o, Dir: dir, Cipher: o.Cipher,
		Mnt: filepath.Join(dir, "plain"), Log: filepath.Join(dir, "kmsfs.log")}
	if v.Cipher == "" {
		v.Cipher = filepath.Join(dir, "cipher")
	}
	if err := os.Mkdir(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if len(v.o.Keys) == 0 {
		v.Key = ftKeyFile(t, dir)
		v.o.Keys = []string{"local:" + v.Key}
	}
	args := []string{"init"}
	for _, k := range v.o.Keys {
		args = append(args, "--key", k)
	}
	args = append(append(args, v.o.InitArgs...), v.Cipher)
	if out, err := ftRun(bin, v.o.Env, args...); err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(v.cleanup)
	return v
}

// ftKeyFile writes a fresh 32-byte local key file into dir.
func ftKeyFile(t testing.TB, dir string) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	p := filepath.Join(dir, "local.key")
	if err := os.WriteFile(p, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ftRun runs the kmsfs binary with env added, bounded by ftCmdTimeout, and
// returns its combined output.
func ftRun(bin string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ftCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (kmsfs %s did not finish within %v)", err, args[0], ftCmdTimeout)
	}
	return string(out), err
}

// mount starts `kmsfs mount -f` and returns once it has logged "mounted".
func (v *ftVolume) mount(t testing.TB, extra ...string) {
	t.Helper()
	if err := v.tryMount(extra...); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, v.logText())
	}
}

// tryMount is mount that returns the failure (with the process's stderr)
// instead. The process is reaped in any case.
func (v *ftVolume) tryMount(extra ...string) error {
	if v.proc != nil {
		return errors.New("ftVolume: already mounted")
	}
	v.mounts++
	mark := v.logMark()
	args := append([]string{"mount", "-f", "--log-file", v.Log}, v.o.MountArgs...)
	args = append(append(args, extra...), v.Cipher, v.Mnt)
	stderr := filepath.Join(v.Dir, fmt.Sprintf("stderr-%d", v.mounts))
	ef, err := os.Create(stderr)
	if err != nil {
		return err
	}
	defer ef.Close()
	cmd := exec.Command(v.bin, args...)
	cmd.Env = append(os.Environ(), v.o.Env...)
	cmd.Stdout, cmd.Stderr = ef, ef
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &ftProc{cmd: cmd, done: make(chan struct{}), stderr: stderr}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(ftMountTimeout)
	for {
		if p.exited() {
			out, _ := os.ReadFile(stderr)
			return fmt.Errorf("kmsfs %s: exited (%v) before mounting:\n%s", strings.Join(args, " "), p.err, out)
		}
		if ftIsMounted(v.Mnt) && v.logHas(mark, func(l ftLogLine) bool { return l.F["msg"] == "mounted" }) {
			v.proc = p
			return nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-p.done
			unix.Unmount(v.Mnt, unix.MNT_DETACH)
			return fmt.Errorf("kmsfs %s: not mounted after %v", strings.Join(args, " "), ftMountTimeout)
		}
		time.Sleep(ftPollPause) // between bounded checks of the log and mountinfo
	}
}

// pid returns the running daemon's process ID.
func (v *ftVolume) pid() int { return v.proc.cmd.Process.Pid }

// kill SIGKILLs the daemon and waits for it to exit; the dead mount stays
// until detach.
func (v *ftVolume) kill(t testing.TB) {
	t.Helper()
	p := v.proc
	v.proc = nil
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(ftExitTimeout):
		t.Fatalf("kmsfs (pid %d) still running %v after SIGKILL", p.cmd.Process.Pid, ftExitTimeout)
	}
}

// detach lazily unmounts the mount point and waits until it is gone.
func (v *ftVolume) detach(t testing.TB) {
	t.Helper()
	if err := unix.Unmount(v.Mnt, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
		t.Fatalf("umount -l %s: %v", v.Mnt, err)
	}
	ftWait(t, "dead mount detached", ftExitTimeout, func() bool { return !ftIsMounted(v.Mnt) })
}

// unmount unmounts (retrying while the kernel still releases files) and
// waits, bounded, until the daemon has exited.
func (v *ftVolume) unmount(t testing.TB) {
	t.Helper()
	if err := v.tryUnmount(); err != nil {
		t.Fatal(err)
	}
}

func (v *ftVolume) tryUnmount() error {
	p := v.proc
	if p == nil {
		return nil
	}
	deadline := time.Now().Add(ftExitTimeout)
	for {
		err := unix.Unmount(v.Mnt, 0)
		if err == nil {
			break
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return fmt.Errorf("unmount %s: %v", v.Mnt, err)
		}
		time.Sleep(ftPollPause) // the kernel releases closed files asynchronously
	}
	v.proc = nil
	select {
	case <-p.done:
	case <-time.After(time.Until(deadline) + time.Second):
		p.cmd.Process.Kill()
		return fmt.Errorf("kmsfs (pid %d) still running after unmount", p.cmd.Process.Pid)
	}
	if p.err != nil {
		out, _ := os.ReadFile(p.stderr)
		return fmt.Errorf("kmsfs mount exited with %v after unmount:\n%s", p.err, out)
	}
	return nil
}

// remount unmounts cleanly and mounts again: what is read afterwards comes
// from the cipher dir through a fresh process.
func (v *ftVolume) remount(t testing.TB, extra ...string) {
	t.Helper()
	v.unmount(t)
	v.mount(t, extra...)
}

func (v *ftVolume) cleanup() {
	if v.proc == nil && ftIsMounted(v.Mnt) {
		unix.Unmount(v.Mnt, unix.MNT_DETACH) // a killed daemon's dead mount
	}
	if p := v.proc; p != nil {
		if err := v.tryUnmount(); err != nil {
			v.t.Errorf("cleanup: %v", err)
			unix.Unmount(v.Mnt, unix.MNT_DETACH)
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	if v.t.Failed() {
		v.t.Logf("kmsfs log %s:\n%s", v.Log, v.logText())
	}
}

// path returns the mount's path of a slash-separated name.
func (v *ftVolume) path(name string) string { return filepath.Join(v.Mnt, filepath.FromSlash(name)) }

// cipherPath returns the cipher dir's path of a slash-separated name.
func (v *ftVolume) cipherPath(name string) string {
	return filepath.Join(v.Cipher, filepath.FromSlash(name))
}

// waitReleased waits, bounded, until the daemon holds no descriptor of the
// cipher file name: the kernel sends RELEASE after close(2) returns, and
// the daemon rereads a header only on a fresh open.
func (v *ftVolume) waitReleased(t testing.TB, name string) {
	t.Helper()
	target := v.cipherPath(name)
	dir := fmt.Sprintf("/proc/%d/fd", v.pid())
	ftWait(t, "daemon releases "+name, ftExitTimeout, func() bool {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && (l == target || l == target+" (deleted)") {
				return false
			}
		}
		return true
	})
}

// ftLogLine is one line of a logrus text log, split into its fields.
type ftLogLine struct {
	Raw string
	F   map[string]string
}

// ftParseLogLine splits `key=value key="quoted value" …`.
func ftParseLogLine(s string) ftLogLine {
	l := ftLogLine{Raw: s, F: map[string]string{}}
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

// logMark returns the log's current length, for logSince.
func (v *ftVolume) logMark() int64 {
	fi, err := os.Stat(v.Log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the complete lines logged after mark.
func (v *ftVolume) logSince(mark int64) []ftLogLine {
	f, err := os.Open(v.Log)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(mark, 0); err != nil {
		return nil
	}
	var lines []ftLogLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, ftParseLogLine(sc.Text()))
	}
	return lines
}

func (v *ftVolume) logHas(mark int64, match func(ftLogLine) bool) bool {
	for _, l := range v.logSince(mark) {
		if match(l) {
			return true
		}
	}
	return false
}

func (v *ftVolume) logText() string {
	b, err := os.ReadFile(v.Log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// ftIsMounted reports whether path is a mount point in this namespace.
func ftIsMounted(path string) bool {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(raw)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT ...; octal escapes for blanks.
		if f := strings.Fields(line); len(f) > 4 && mntUnescape(f[4]) == path {
			return true
		}
	}
	return false
}

// ftWait polls cond until it holds, failing the test after timeout.
func ftWait(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v", what, timeout)
		}
		time.Sleep(ftPollPause) // between bounded checks
	}
}

// ftSeed returns the run's seed: $KMSFS_SEED if set, else a random one.
// It logs the seed so that a failure can be replayed.
func ftSeed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv("KMSFS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("KMSFS_SEED=%q: %v", s, err)
		}
		t.Logf("seed=%d (from KMSFS_SEED)", seed)
		return seed
	}
	var b [8]byte
	rand.Read(b[:])
	seed := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 | uint64(b[4])<<32 | uint64(b[5])<<40
	t.Logf("seed=%d (replay with KMSFS_SEED=%d)", seed, seed)
	return seed
}

// ftSoak reports whether the long versions run (KMSFS_SOAK=1).
func ftSoak() bool { return os.Getenv("KMSFS_SOAK") == "1" }

// ftBytes returns n bytes drawn from r.
func ftBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		x := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j] = byte(x)
			x >>= 8
		}
	}
	return b
}

// ftErrno returns the errno inside err, or 0.
func ftErrno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// ftBlocks is a file read back block by block through the mount.
type ftBlocks struct {
	Data []byte          // the plaintext, zeros in place of bad blocks
	Bad  map[int64]error // blocks whose read failed (an errno, or a short read)
}

// ftReadBlocks opens p and reads it one block of bs bytes at a time with
// O_DIRECT, so that each read(2) is one request to the daemon (no page
// cache, no readahead) and a failed block fails only its own read. It
// returns an error only if p cannot be opened or stat'ed.
func ftReadBlocks(p string, bs int) (*ftBlocks, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	r := &ftBlocks{Data: make([]byte, size), Bad: map[int64]error{}}
	buf := make([]byte, bs)
	for i := int64(0); i*int64(bs) < size; i++ {
		want := min(int64(bs), size-i*int64(bs))
		n, err := unix.Pread(int(f.Fd()), buf, i*int64(bs))
		switch {
		case err != nil:
			r.Bad[i] = err
		case int64(n) != want:
			r.Bad[i] = fmt.Errorf("short read: %d of %d bytes", n, want)
		default:
			copy(r.Data[i*int64(bs):], buf[:n])
		}
	}
	return r, nil
}

// ftRand returns a deterministic random source for test data.
func ftRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, 0x6b6d7366)) }

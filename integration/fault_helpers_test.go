package integration_test

import (
	"bufio"
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

	"github.com/kmsfs/kmsfs/internal/mountinfo"
)

// ftMountTimeout bounds `kmsfs mount -f` until it logs "mounted"; the
// other waits use mntCmdTimeout, mntExitTimeout and mntPoll.
const ftMountTimeout = 30 * time.Second

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
	t   testing.TB
	bin string
	o   ftOptions
	Dir string // holds the mount point, the log (text format), the key file
	volFiles
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
	v := &ftVolume{t: t, bin: bin, o: o, Dir: dir, volFiles: volFiles{Cipher: o.Cipher,
		Mnt: filepath.Join(dir, "plain"), Log: filepath.Join(dir, "kmsfs.log")}}
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
		v.Key = mntKeyFile(t, dir, nil)
		v.o.Keys = []string{"local:" + v.Key}
	}
	v.o.Env = mntTrustEnv(t, dir, nil, v.o.Env)
	args := mntInitArgs(v.o.Keys, v.o.InitArgs, v.Cipher)
	if out, err := mntRunKmsfs(bin, nil, v.o.Env, args...); err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(v.cleanup)
	return v
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
	ready := false
	mntPoll(ftMountTimeout, func() bool {
		ready = !p.exited() && ftIsMounted(v.Mnt) && v.logHas(mark, func(l ftLogLine) bool { return l.F["msg"] == "mounted" })
		return ready || p.exited()
	})
	switch {
	case ready:
		v.proc = p
		return nil
	case p.exited():
		out, _ := os.ReadFile(stderr)
		return fmt.Errorf("kmsfs %s: exited (%v) before mounting:\n%s", strings.Join(args, " "), p.err, out)
	default:
		cmd.Process.Kill()
		<-p.done
		unix.Unmount(v.Mnt, unix.MNT_DETACH)
		return fmt.Errorf("kmsfs %s: not mounted after %v", strings.Join(args, " "), ftMountTimeout)
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
	case <-time.After(mntExitTimeout):
		t.Fatalf("kmsfs (pid %d) still running %v after SIGKILL", p.cmd.Process.Pid, mntExitTimeout)
	}
}

// detach lazily unmounts the mount point and waits until it is gone.
func (v *ftVolume) detach(t testing.TB) {
	t.Helper()
	if err := unix.Unmount(v.Mnt, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
		t.Fatalf("umount -l %s: %v", v.Mnt, err)
	}
	ftWait(t, "dead mount detached", mntExitTimeout, func() bool { return !ftIsMounted(v.Mnt) })
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
	deadline := time.Now().Add(mntExitTimeout)
	var err error
	// Retry on EBUSY: the kernel releases closed files asynchronously.
	mntPoll(mntExitTimeout, func() bool { err = unix.Unmount(v.Mnt, 0); return err != unix.EBUSY })
	if err != nil {
		return fmt.Errorf("unmount %s: %v", v.Mnt, err)
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
	v.logIfFailed(v.t)
}

// waitReleased waits, bounded, until the daemon holds no descriptor of the
// cipher file name: the kernel sends RELEASE after close(2) returns, and
// the daemon rereads a header only on a fresh open.
func (v *ftVolume) waitReleased(t testing.TB, name string) {
	t.Helper()
	pid, target := v.pid(), v.cipherPath(name)
	ftWait(t, "daemon releases "+name, mntExitTimeout, func() bool {
		held, err := mntHolds(pid, target)
		return err == nil && len(held) == 0
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

// ftIsMounted reports whether path is a mount point in this namespace;
// unlike mntIsMounted it needs no test (false if mountinfo is unreadable).
func ftIsMounted(path string) bool {
	_, ok, _ := mountinfo.Lookup(path)
	return ok
}

// ftWait polls cond until it holds, failing the test after timeout.
func ftWait(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !mntPoll(timeout, cond) {
		t.Fatalf("%s: not reached within %v", what, timeout)
	}
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

package integration_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// mntCLIFailure is a mount that must fail: setup breaks a fresh volume
// and returns the cipher dir and mount point to use.
type mntCLIFailure struct {
	name  string
	setup func(t *testing.T, v *mntVolume) (cipher, mnt string)
	// want are regular expressions the error output must match.
	want []string
}

// TestCLIMountFails checks that `kmsfs mount` exits non-zero with a
// message naming the cause, and leaves nothing mounted or running.
func TestCLIMountFails(t *testing.T) {
	bin := needBinary(t)
	cases := []mntCLIFailure{
		{"missing-cipher-dir", func(t *testing.T, v *mntVolume) (string, string) {
			return filepath.Join(t.TempDir(), "nothing-here"), v.Mnt
		}, []string{`nothing-here`, `(?i)(no such file or directory|does not exist)`}},
		{"uninitialised", func(t *testing.T, v *mntVolume) (string, string) {
			return t.TempDir(), v.Mnt
		}, []string{`not a kmsfs cipher dir`, `kmsfs init`}},
		{"missing-mount-point", func(t *testing.T, v *mntVolume) (string, string) {
			return v.Cipher, filepath.Join(t.TempDir(), "no-mnt")
		}, []string{`mount point .*no-mnt`, `no such file or directory`}},
		{"mount-point-is-a-file", func(t *testing.T, v *mntVolume) (string, string) {
			f := filepath.Join(t.TempDir(), "file")
			mntWriteFile(t, f, nil)
			return v.Cipher, f
		}, []string{`mount point .*file`, `not a directory`}},
		{"mount-point-busy", func(t *testing.T, v *mntVolume) (string, string) {
			v.mount(t)
			return v.Cipher, v.Mnt
		}, []string{`mount point .*plain`, `busy`}},
		{"key-file-missing", func(t *testing.T, v *mntVolume) (string, string) {
			if err := os.Remove(v.Key); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`key file: open \S*/local-\d+\.key: no such file or directory`}},
		{"key-file-world-writable", func(t *testing.T, v *mntVolume) (string, string) {
			if err := os.Chmod(v.Key, 0o666); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`writable by every user`, `chmod 600`}},
		{"key-file-short", func(t *testing.T, v *mntVolume) (string, string) {
			if err := os.WriteFile(v.Key, []byte("short"), 0o600); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`holds 5 bytes, want exactly 32`}},
		{"conf-unknown-feature", func(t *testing.T, v *mntVolume) (string, string) {
			conf := filepath.Join(v.Cipher, "kmsfs.conf")
			raw, err := os.ReadFile(conf)
			if err != nil {
				t.Fatal(err)
			}
			raw = []byte(strings.Replace(string(raw), `"features": []`, `"features": ["from-the-future"]`, 1))
			if err := os.WriteFile(conf, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`feature "from-the-future" is unknown`, `upgrade kmsfs`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := mntNew(t, mntOptions{})
			cipher, mnt := c.setup(t, v)
			mntCheckMountFails(t, bin, v.o.Env, cipher, mnt, c.want)
		})
	}
}

// mntCheckMountFails runs `kmsfs mount` and checks that it fails with
// output matching every pattern of want, and leaves mnt unmounted with no
// daemon serving it. It returns the output.
func mntCheckMountFails(t *testing.T, bin string, env []string, cipher, mnt string, want []string) string {
	t.Helper()
	wasMounted := mntIsMounted(t, mnt)
	start := time.Now()
	out, err := mntRunKmsfs(bin, nil, env, "mount", cipher, mnt)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("kmsfs mount: %v, want a non-zero exit\n%s", err, out)
	}
	for _, w := range want {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("message %q does not match %q", strings.TrimSpace(out), w)
		}
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Errorf("kmsfs mount took %v to fail", elapsed)
	}
	if !wasMounted && mntIsMounted(t, mnt) {
		t.Errorf("%s is mounted after a failed mount", mnt)
	}
	if pid := mntDaemon(mnt); pid != 0 && !wasMounted {
		t.Errorf("a kmsfs daemon (pid %d) serves %s after a failed mount", pid, mnt)
	}
	return out
}

// TestCLIMountWrongKey replaces a volume's key file with another key:
// kmsfs either refuses the mount naming the key, or mounts and fails
// opening old files with ENOKEY and a log line that names the file and
// the cause. Nothing returns wrong plaintext.
func TestCLIMountWrongKey(t *testing.T) {
	v := mntStart(t, mntOptions{})
	mntWriteFile(t, v.path("old"), []byte("written under the first key"))
	v.unmount(t)
	other := make([]byte, 32)
	rand.Read(other)
	if err := os.WriteFile(v.Key, other, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := v.tryMount(t)
	if err != nil {
		if !strings.Contains(out, "key") {
			t.Fatalf("mount with another key failed without naming the key: %s", out)
		}
		return
	}
	_, err = os.ReadFile(v.path("old"))
	mntWantErrno(t, "open a file of the first key", err, syscall.ENOKEY)
	log := v.logText()
	for _, want := range []string{"op=open", "path=old", "wrapped under another key file", `errno="required key not available"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log does not say %q:\n%s", want, log)
		}
	}
}

// TestCLIMountDisabledKey disables a volume's KMS key: the mount fails
// and says the key is disabled.
func TestCLIMountDisabledKey(t *testing.T) {
	e := kmstest.Start(t)
	v := mntNew(t, mntOptions{Keys: []string{"awskms:" + e.Symmetric2.ARN}, Env: mntAWSEnv(e)})
	ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
	defer cancel()
	if _, err := e.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(e.Symmetric2.ID)}); err != nil {
		t.Fatal(err)
	}
	mntCheckMountFails(t, v.bin, v.o.Env, v.Cipher, v.Mnt, []string{`(?i)disabled`, regexp.QuoteMeta(e.Symmetric2.ID)})
	t.Run("enabled-again", func(t *testing.T) {
		if _, err := e.Client().EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(e.Symmetric2.ID)}); err != nil {
			t.Fatal(err)
		}
		v.mount(t)
		mntWriteFile(t, v.path("f"), []byte("x"))
		mntCheckFile(t, v.path("f"), []byte("x"))
	})
}

// TestCLIErrorPrefix checks that a failed mount's message carries the
// program name once.
func TestCLIErrorPrefix(t *testing.T) {
	v := mntNew(t, mntOptions{})
	out, err := mntRunKmsfs(v.bin, nil, nil, "mount", t.TempDir(), v.Mnt)
	if err == nil {
		t.Fatal("mount of an empty dir succeeded")
	}
	if strings.Count(out, "kmsfs:") != 1 {
		t.Fatalf("message %q: want one \"kmsfs:\" prefix", strings.TrimSpace(out))
	}
}

// TestCLIUnmountNotMounted checks that unmounting a plain dir fails and
// names it.
func TestCLIUnmountNotMounted(t *testing.T) {
	dir := t.TempDir()
	out, err := mntRunKmsfs(needBinary(t), nil, nil, "unmount", dir)
	if err == nil || !strings.Contains(out, dir) {
		t.Fatalf("kmsfs unmount of a plain dir: %v, %q", err, out)
	}
}

// TestCLIUnmountBusy checks that `kmsfs unmount` refuses a mount with an
// open file, says it is busy, and works once the file is closed.
func TestCLIUnmountBusy(t *testing.T) {
	v := mntStart(t, mntOptions{})
	f := mntOpen(t, v.path("held"), os.O_CREATE|os.O_RDWR, 0o644)
	out, err := v.run("unmount", v.Mnt)
	if err == nil || !strings.Contains(out, "busy") {
		t.Fatalf("kmsfs unmount with a file open: %v, %q; want a failure that says busy", err, out)
	}
	if !mntIsMounted(t, v.Mnt) {
		t.Fatal("a refused unmount unmounted")
	}
	f.Close()
	v.unmount(t)
}

// mntForeground is a `kmsfs mount -f` process: its log goes to stderr,
// whose lines the test reads.
type mntForeground struct {
	cmd     *exec.Cmd
	exited  chan error    // the process's exit, once
	mounted chan struct{} // closed when the log says "mounted"
	mu      sync.Mutex
	log     strings.Builder
}

// mntStartForeground starts `kmsfs mount -f` for v; its cleanup kills it
// and removes a mount it left behind.
func mntStartForeground(t *testing.T, v *mntVolume) *mntForeground {
	t.Helper()
	f := &mntForeground{exited: make(chan error, 1), mounted: make(chan struct{})}
	f.cmd = exec.Command(v.bin, "mount", "-f", v.Cipher, v.Mnt)
	f.cmd.Env = append(os.Environ(), v.o.Env...)
	stderr, err := f.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			f.mu.Lock()
			f.log.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
			if !once && strings.Contains(sc.Text(), "msg=mounted") {
				once = true
				close(f.mounted)
			}
		}
		f.exited <- f.cmd.Wait()
	}()
	t.Cleanup(func() {
		if mntIsMounted(t, v.Mnt) {
			mntForceUnmount(v.Mnt)
		}
		f.cmd.Process.Kill()
	})
	return f
}

// waitMounted waits, bounded, until the log says "mounted"; it fails the
// test if the process exits first.
func (f *mntForeground) waitMounted(t *testing.T) {
	t.Helper()
	select {
	case <-f.mounted:
	case err := <-f.exited:
		t.Fatalf("kmsfs mount -f exited before mounting: %v\n%s", err, f.logText())
	case <-time.After(mntCmdTimeout):
		t.Fatalf("kmsfs mount -f did not log \"mounted\" within %v\n%s", mntCmdTimeout, f.logText())
	}
}

func (f *mntForeground) logText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.log.String()
}

// stop sends SIGTERM and waits, bounded, for the process to exit.
func (f *mntForeground) stop(t *testing.T, within time.Duration) error {
	t.Helper()
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-f.exited:
		return err
	case <-time.After(within):
		t.Fatalf("kmsfs mount -f still running %v after SIGTERM (stuck on its own mount?)\n%s", within, f.logText())
	}
	return nil
}

// TestCLIForeground runs `kmsfs mount -f` the way systemd would: it logs
// to stderr, serves until SIGTERM, then unmounts and exits 0.
func TestCLIForeground(t *testing.T) {
	v := mntNew(t, mntOptions{})
	f := mntStartForeground(t, v)
	f.waitMounted(t)
	if !mntIsMounted(t, v.Mnt) {
		t.Fatal("kmsfs mount -f logged \"mounted\" before the mount existed")
	}
	mntWriteFile(t, v.path("f"), []byte("foreground"))
	mntCheckFile(t, v.path("f"), []byte("foreground"))
	if err := f.stop(t, mntExitTimeout); err != nil {
		t.Fatalf("kmsfs mount -f after SIGTERM: %v\n%s", err, f.logText())
	}
	if mntIsMounted(t, v.Mnt) {
		t.Fatal("still mounted after kmsfs mount -f exited")
	}
	if !strings.Contains(f.logText(), "msg=unmounted") {
		t.Errorf("stderr lacks the unmount line:\n%s", f.logText())
	}
}

// TestCLIForegroundEarlyStop stops `kmsfs mount -f` as soon as its mount
// appears, as a supervisor may stop a service it just started: the
// process must exit and leave nothing mounted. Bounded attempts, because
// the moment the signal lands varies.
func TestCLIForegroundEarlyStop(t *testing.T) {
	const attempts = 5
	for i := range attempts {
		v := mntNew(t, mntOptions{})
		f := mntStartForeground(t, v)
		deadline := time.Now().Add(mntExitTimeout)
		for !mntIsMounted(t, v.Mnt) {
			select {
			case err := <-f.exited:
				t.Fatalf("attempt %d: kmsfs mount -f exited before mounting: %v\n%s", i, err, f.logText())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("attempt %d: not mounted %v after kmsfs mount -f", i, mntExitTimeout)
			}
			time.Sleep(time.Millisecond) // between bounded checks of /proc
		}
		f.stop(t, 3*time.Second)
		if mntIsMounted(t, v.Mnt) {
			t.Fatalf("attempt %d: %s still mounted after kmsfs mount -f exited on SIGTERM\n%s", i, v.Mnt, f.logText())
		}
	}
}

// TestCLIVersion checks `kmsfs --version`.
func TestCLIVersion(t *testing.T) {
	out, err := mntRunKmsfs(needBinary(t), nil, nil, "--version")
	if err != nil || !regexp.MustCompile(`^kmsfs version \S+\n$`).MatchString(out) {
		t.Fatalf("kmsfs --version: %v, %q", err, out)
	}
}

// TestCLIHelp checks that every command's --help shows examples.
func TestCLIHelp(t *testing.T) {
	for _, cmd := range []string{"", "init", "mount", "unmount"} {
		t.Run("cmd="+cmd, func(t *testing.T) {
			args := strings.Fields(cmd + " --help")
			out, err := mntRunKmsfs(needBinary(t), nil, nil, args...)
			if err != nil || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:") {
				t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// TestCLICompletion checks `kmsfs completion SHELL`; the bash script must
// parse and register a completion for kmsfs.
func TestCLICompletion(t *testing.T) {
	bin := needBinary(t)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run("shell="+shell, func(t *testing.T) {
			out, err := mntRunKmsfs(bin, nil, nil, "completion", shell)
			if err != nil || !strings.Contains(out, "kmsfs") || len(out) < 200 {
				t.Fatalf("kmsfs completion %s: %v\n%s", shell, err, out)
			}
			if shell != "bash" {
				return
			}
			script := filepath.Join(t.TempDir(), "kmsfs.bash")
			if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
			defer cancel()
			got, err := exec.CommandContext(ctx, "bash", "--norc", "--noprofile", "-c", "source "+script+" && complete -p kmsfs").CombinedOutput()
			if err != nil || !strings.Contains(string(got), "kmsfs") {
				t.Fatalf("bash does not take the script: %v\n%s", err, got)
			}
		})
	}
}

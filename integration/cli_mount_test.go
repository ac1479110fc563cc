package integration_test

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// mntCLIFailure is a mount that must fail: setup breaks a fresh volume
// and returns the cipher dir and mount point to use.
type mntCLIFailure struct {
	name  string
	setup func(t *testing.T, v *fusetest.CLIVolume) (cipher, mnt string)
	// want are regular expressions the error output must match.
	want []string
}

// TestCLIMountFails checks that `kmsfs mount` exits non-zero with a
// message naming the cause, and leaves nothing mounted or running.
func TestCLIMountFails(t *testing.T) {
	cases := []mntCLIFailure{
		{"missing-cipher-dir", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			return filepath.Join(t.TempDir(), "nothing-here"), v.Mnt
		}, []string{`nothing-here`, `(?i)(no such file or directory|does not exist)`}},
		{"uninitialised", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			return t.TempDir(), v.Mnt
		}, []string{`not a kmsfs cipher dir`, `kmsfs init`}},
		{"missing-mount-point", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			return v.Cipher, filepath.Join(t.TempDir(), "no-mnt")
		}, []string{`mount point .*no-mnt`, `no such file or directory`}},
		{"mount-point-is-a-file", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			f := filepath.Join(t.TempDir(), "file")
			mntWriteFile(t, f, nil)
			return v.Cipher, f
		}, []string{`mount point .*file`, `not a directory`}},
		{"mount-point-busy", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			v.Mount(t)
			return v.Cipher, v.Mnt
		}, []string{`mount point .*plain`, `busy`}},
		{"key-file-missing", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			if err := os.Remove(v.Key); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`key file: open \S*/local-\d+\.key: no such file or directory`}},
		{"key-file-world-writable", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			if err := os.Chmod(v.Key, 0o666); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`writable by every user`, `chmod 600`}},
		{"key-file-short", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			if err := os.WriteFile(v.Key, []byte("short"), 0o600); err != nil {
				t.Fatal(err)
			}
			return v.Cipher, v.Mnt
		}, []string{`holds 5 bytes, want exactly 32`}},
		{"conf-unknown-feature", func(t *testing.T, v *fusetest.CLIVolume) (string, string) {
			c := trReadConf(t, v.Cipher)
			features, _ := c["features"].([]any) // none: the key may be absent
			c["features"] = append(features, "from-the-future")
			trWriteConf(t, v.Cipher, c)
			return v.Cipher, v.Mnt
		}, []string{`feature "from-the-future" is unknown`, `upgrade kmsfs`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			cipher, mnt := c.setup(t, v)
			v.MountRefused(t, cipher, mnt, c.want...)
		})
	}
}

// TestCLIMountWrongKey replaces a volume's key file with another key:
// kmsfs either refuses the mount naming the key, or mounts and fails
// opening old files with ENOKEY and a log line that names the file and
// the cause. Nothing returns wrong plaintext.
func TestCLIMountWrongKey(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	mntWriteFile(t, v.Path("old"), []byte("written under the first key"))
	v.Unmount(t)
	other := make([]byte, 32)
	rand.Read(other)
	if err := os.WriteFile(v.Key, other, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := v.TryMount(t)
	if err != nil {
		if !strings.Contains(out, "key") {
			t.Fatalf("mount with another key failed without naming the key: %s", out)
		}
		return
	}
	_, err = os.ReadFile(v.Path("old"))
	mntWantErrno(t, "open a file of the first key", err, syscall.ENOKEY)
	log := v.LogText()
	for _, want := range []string{"op=open", "path=old", "wrapped under another key file", `errno="required key not available"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log does not say %q:\n%s", want, log)
		}
	}
}

// TestCLIMountDisabledKey disables a volume's KMS key: the mount fails
// and says the key is disabled.
func TestCLIMountDisabledKey(t *testing.T) {
	e := fusetest.KMS(t)
	v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + e.Symmetric2.ARN}, Env: fusetest.AWSEnv(e)})
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	if _, err := e.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(e.Symmetric2.ID)}); err != nil {
		t.Fatal(err)
	}
	v.MountRefused(t, v.Cipher, v.Mnt, `(?i)disabled`, regexp.QuoteMeta(e.Symmetric2.ID))
	t.Run("enabled-again", func(t *testing.T) {
		if _, err := e.Client().EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(e.Symmetric2.ID)}); err != nil {
			t.Fatal(err)
		}
		v.Mount(t)
		mntWriteFile(t, v.Path("f"), []byte("x"))
		mntCheckFile(t, v.Path("f"), []byte("x"))
	})
}

// TestCLIErrorPrefix checks that a failed mount's message carries the
// program name once.
func TestCLIErrorPrefix(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	out, err := fusetest.RunKmsfs(v.Kmsfs(), nil, nil, "mount", t.TempDir(), v.Mnt)
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
	out, err := fusetest.RunKmsfs(suite.Kmsfs(t), nil, nil, "unmount", dir)
	if err == nil || !strings.Contains(out, dir) {
		t.Fatalf("kmsfs unmount of a plain dir: %v, %q", err, out)
	}
}

// TestCLIUnmountBusy checks that `kmsfs unmount` refuses a mount with an
// open file, says it is busy, and works once the file is closed.
func TestCLIUnmountBusy(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	f := mntOpen(t, v.Path("held"), os.O_CREATE|os.O_RDWR, 0o644)
	out, err := v.Run("unmount", v.Mnt)
	if err == nil || !strings.Contains(out, "busy") {
		t.Fatalf("kmsfs unmount with a file open: %v, %q; want a failure that says busy", err, out)
	}
	if !fusetest.IsMounted(t, v.Mnt) {
		t.Fatal("a refused unmount unmounted")
	}
	f.Close()
	v.Unmount(t)
}

// TestCLIForeground runs `kmsfs mount -f` the way systemd would: it logs
// to stderr, serves until SIGTERM, then unmounts and exits 0.
func TestCLIForeground(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.MountForeground(t)
	if !fusetest.IsMounted(t, v.Mnt) {
		t.Fatal("kmsfs mount -f logged \"mounted\" before the mount existed")
	}
	mntWriteFile(t, v.Path("f"), []byte("foreground"))
	mntCheckFile(t, v.Path("f"), []byte("foreground"))
	if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
		t.Fatalf("kmsfs mount -f after SIGTERM: %v\n%s", err, v.LogText())
	}
	if fusetest.IsMounted(t, v.Mnt) {
		t.Fatal("still mounted after kmsfs mount -f exited")
	}
	if !strings.Contains(v.LogText(), "msg=unmounted") {
		t.Errorf("stderr lacks the unmount line:\n%s", v.LogText())
	}
}

// TestCLIForegroundEarlyStop stops `kmsfs mount -f` as soon as its mount
// appears, as a supervisor may stop a service it just started: the
// process must exit and leave nothing mounted. Bounded attempts, because
// the moment the signal lands varies.
func TestCLIForegroundEarlyStop(t *testing.T) {
	const attempts = 5
	for i := range attempts {
		v := suite.InitVolume(t, fusetest.CLIOptions{})
		v.StartForeground(t)
		deadline := time.Now().Add(fusetest.ExitTimeout)
		for !fusetest.IsMounted(t, v.Mnt) {
			if v.ForegroundExited() {
				t.Fatalf("attempt %d: kmsfs mount -f exited before mounting\n%s", i, v.LogText())
			}
			if time.Now().After(deadline) {
				t.Fatalf("attempt %d: not mounted %v after kmsfs mount -f", i, fusetest.ExitTimeout)
			}
			time.Sleep(time.Millisecond) // between bounded checks of /proc
		}
		v.Stop(t, 3*time.Second)
		if fusetest.IsMounted(t, v.Mnt) {
			t.Fatalf("attempt %d: %s still mounted after kmsfs mount -f exited on SIGTERM\n%s", i, v.Mnt, v.LogText())
		}
	}
}

// TestCLIVersion checks `kmsfs --version`.
func TestCLIVersion(t *testing.T) {
	out, err := fusetest.RunKmsfs(suite.Kmsfs(t), nil, nil, "--version")
	if err != nil || !regexp.MustCompile(`^kmsfs version \S+\n$`).MatchString(out) {
		t.Fatalf("kmsfs --version: %v, %q", err, out)
	}
}

// TestCLIHelp checks that every command's --help shows examples.
func TestCLIHelp(t *testing.T) {
	for _, cmd := range []string{"", "init", "mount", "unmount"} {
		t.Run("cmd="+cmd, func(t *testing.T) {
			args := strings.Fields(cmd + " --help")
			out, err := fusetest.RunKmsfs(suite.Kmsfs(t), nil, nil, args...)
			if err != nil || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:") {
				t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// TestCLICompletion checks `kmsfs completion SHELL`; the bash script must
// parse and register a completion for kmsfs.
func TestCLICompletion(t *testing.T) {
	bin := suite.Kmsfs(t)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run("shell="+shell, func(t *testing.T) {
			out, err := fusetest.RunKmsfs(bin, nil, nil, "completion", shell)
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
			ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
			defer cancel()
			got, err := exec.CommandContext(ctx, "bash", "--norc", "--noprofile", "-c", "source "+script+" && complete -p kmsfs").CombinedOutput()
			if err != nil || !strings.Contains(string(got), "kmsfs") {
				t.Fatalf("bash does not take the script: %v\n%s", err, got)
			}
		})
	}
}

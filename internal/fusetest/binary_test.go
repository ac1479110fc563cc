package fusetest_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// suite is this test binary's harness: the kmsfs binary and the steps
// below.
var suite *fusetest.Suite

// steps are what TestUser runs in other processes.
var steps = fusetest.Steps{
	"uid":  func([]string) error { fmt.Print(os.Getuid()); return nil },
	"echo": func([]string) error { _, err := os.Stdout.ReadFrom(os.Stdin); return err },
	"errno": func(a []string) error {
		n, _ := strconv.Atoi(a[0])
		return &os.PathError{Op: "step", Path: "x", Err: syscall.Errno(n)}
	},
	"fail": func([]string) error { return errors.New("no errno") },
	"hold": func([]string) error { fusetest.Hold(); return nil },
	"read": func(a []string) error {
		b, err := os.ReadFile(a[0])
		os.Stdout.Write(b)
		return err
	},
}

func TestMain(m *testing.M) {
	suite = fusetest.Setup(fusetest.SuiteOptions{Kmsfs: true, Steps: steps})
	os.Exit(suite.Run(m))
}

// TestCLIVolume runs a volume through its life, mounted both ways: data
// survives a remount (a fresh process reading the cipher dir), a killed
// process leaves a dead mount that Detach removes, and the volume mounts
// again after that.
func TestCLIVolume(t *testing.T) {
	for _, mode := range []string{"background", "foreground"} {
		t.Run("mode="+mode, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			mount := v.Mount
			if mode == "foreground" {
				mount = v.MountForeground
			}
			mount(t)
			first := v.PID()
			if first == 0 || fusetest.Exited(first) {
				t.Fatalf("mounted, but pid %d does not run", first)
			}
			want := []byte("through the " + mode + " process")
			if err := os.WriteFile(v.Path("f"), want, 0o644); err != nil {
				t.Fatal(err)
			}
			v.Remount(t)
			if !fusetest.Exited(first) {
				t.Errorf("pid %d still runs after the remount", first)
			}
			if got, err := os.ReadFile(v.Path("f")); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after remount: %q, %v; want %q", got, err, want)
			}
			// The kernel releases the file after close(2) returns.
			v.WaitReleased(t, "f")
			v.Kill(t)
			if v.PID() != 0 {
				t.Errorf("PID() = %d after Kill", v.PID())
			}
			if _, err := os.ReadFile(v.Path("f")); err == nil {
				t.Fatal("read through a killed daemon's mount succeeded")
			}
			v.Detach(t)
			mount(t)
			if got, err := os.ReadFile(v.Path("f")); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after kill and mount: %q, %v; want %q", got, err, want)
			}
			if !v.LogHas(0, func(l fusetest.LogLine) bool { return l.F["msg"] == "mounted" }) {
				t.Errorf("the log has no msg=mounted line:\n%s", v.LogText())
			}
			v.Unmount(t)
			if fusetest.IsMounted(t, v.Mnt) {
				t.Fatal("still mounted after Unmount")
			}
		})
	}
}

// TestRefusalReported checks the refused-mount check against a mount that
// must fail: a cipher dir never initialised.
func TestRefusalReported(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	out := v.MountRefused(t, t.TempDir(), v.Mnt, `not a kmsfs cipher dir`)
	if out == "" {
		t.Fatal("no message from the refused mount")
	}
}

// TestUser runs steps in other processes: as nobody (who may not read the
// test's private file) and as the test's own user.
func TestUser(t *testing.T) {
	private := t.TempDir() + "/private"
	if err := os.WriteFile(private, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		cred      *syscall.Credential
		uid       string
		readErrno syscall.Errno
	}{
		{"user=nobody", fusetest.NobodyCred(), strconv.Itoa(fusetest.Nobody), syscall.EACCES},
		{"user=self", nil, strconv.Itoa(os.Getuid()), 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			u := suite.User(t, c.cred)
			if got := u.Must(t, "uid"); got != c.uid {
				t.Errorf("step runs as uid %s, want %s", got, c.uid)
			}
			if got := u.MustInput(t, []byte("in"), "echo"); got != "in" {
				t.Errorf("echo of stdin: %q", got)
			}
			if _, errno := u.Do(t, "errno", "28"); errno != syscall.ENOSPC {
				t.Errorf("errno step: %v, want ENOSPC", errno)
			}
			if _, errno := u.Do(t, "read", private); errno != c.readErrno {
				t.Errorf("read of a 0600 root file: errno %v, want %v", errno, c.readErrno)
			}
			release, errno := u.Hold(t, "hold")
			if errno != 0 {
				t.Fatalf("hold: %v", errno)
			}
			release()
			if _, errno := u.Hold(t, "errno", "11"); errno != syscall.EAGAIN {
				t.Errorf("hold that fails: %v, want EAGAIN", errno)
			}
		})
	}
}

// TestParseLogLine splits logrus text lines.
func TestParseLogLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want map[string]string
	}{
		{`level=info msg=mounted`, map[string]string{"level": "info", "msg": "mounted"}},
		{`msg="a b" path=x`, map[string]string{"msg": "a b", "path": "x"}},
		{`msg="quote \" inside"`, map[string]string{"msg": `quote " inside`}},
		{`kmsfs: not a log line`, map[string]string{}},
	} {
		t.Run("line="+c.line, func(t *testing.T) {
			got := fusetest.ParseLogLine(c.line).F
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("fields %v, want %v", got, c.want)
			}
		})
	}
}

package fusetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Step is one action of a test run in a process of its own, as another
// user (the kernel's permission checks, fusermount3) or as another process
// (POSIX record locks belong to processes). It gets the arguments User
// passed, may read standard input and write its result to standard output.
// An error that wraps a syscall.Errno reaches the test as that errno.
type Step func(args []string) error

// Steps are the steps of a test binary by name, given to Setup.
type Steps map[string]Step

// stepEnv names the step a process of the test binary is to run instead
// of the tests; its arguments are the process's.
const stepEnv = "KMSFS_FUSETEST_STEP"

// Exit codes of a step process.
const (
	stepFailed = 1 // an error that is no errno
	stepMisuse = 2 // no such step
	stepErrno  = 3 // an errno, printed as "errno=N"
)

// heldLine is what Hold prints once the step holds what it took.
const heldLine = "held"

// Nobody is the uid and gid of nobody and nogroup.
const Nobody = 65534

// NobodyCred returns the credential of nobody:nogroup, without root's
// groups.
func NobodyCred() *syscall.Credential {
	return &syscall.Credential{Uid: Nobody, Gid: Nobody, Groups: []uint32{}}
}

// runStepIfAsked runs the step stepEnv names and exits, if it names one.
func runStepIfAsked(steps Steps) {
	name, ok := os.LookupEnv(stepEnv)
	if !ok {
		return
	}
	step := steps[name]
	if step == nil {
		names := make([]string, 0, len(steps))
		for n := range steps {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Printf("fusetest: no step %q (have %s)\n", name, strings.Join(names, ", "))
		os.Exit(stepMisuse)
	}
	err := step(os.Args[1:])
	var errno syscall.Errno
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &errno):
		fmt.Printf("errno=%d", int(errno))
		os.Exit(stepErrno)
	default:
		fmt.Println(err)
		os.Exit(stepFailed)
	}
}

// Hold is the end of a step that takes something (a lock) and keeps it:
// it tells User.Hold that it holds it, then waits until the test releases
// it by closing the step's standard input.
func Hold() {
	fmt.Println(heldLine)
	io.Copy(io.Discard, os.Stdin)
}

// User runs steps of the test binary as one user.
type User struct {
	bin  string
	cred *syscall.Credential // nil: as the test
}

// User returns a runner of steps as cred, or as the test's own user (in
// another process) when cred is nil. For another user the test binary is
// copied, once per run, to where every user may run it.
func (s *Suite) User(t testing.TB, cred *syscall.Credential) *User {
	t.Helper()
	if cred == nil {
		self, err := os.Executable()
		if err != nil {
			t.Fatalf("fusetest: the test binary: %v", err)
		}
		return &User{bin: self}
	}
	s.selfOnce.Do(func() { s.self, s.selfDir, s.selfErr = shareSelf() })
	if s.selfErr != nil {
		t.Fatal(s.selfErr)
	}
	return &User{bin: s.self, cred: cred}
}

// shareSelf puts the test binary where every user may run it: go test
// keeps it in a directory only its user may enter.
func shareSelf() (bin, dir string, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", "", fmt.Errorf("fusetest: the test binary: %w", err)
	}
	dir, err = os.MkdirTemp("", "kmsfs-fusetest-self-")
	if err != nil {
		return "", "", fmt.Errorf("fusetest: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
			dir = ""
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", dir, fmt.Errorf("fusetest: %w", err)
	}
	bin = filepath.Join(dir, filepath.Base(self))
	if os.Link(self, bin) != nil {
		if err := copyFile(self, bin); err != nil {
			return "", dir, fmt.Errorf("fusetest: copy the test binary for other users: %w", err)
		}
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return "", dir, fmt.Errorf("fusetest: %w", err)
	}
	return bin, dir, nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// command returns the process that runs step args[0] with args[1:], in a
// clean environment, from /.
func (u *User) command(ctx context.Context, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, u.bin, args[1:]...)
	// A race-built test binary sleeps a second at exit by default
	// (atexit_sleep_ms), which a step pays each time.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/", "GORACE=atexit_sleep_ms=0", stepEnv + "=" + args[0]}
	cmd.Dir = "/"
	if u.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred}
	}
	cmd.WaitDelay = time.Second
	return cmd
}

// Do runs step args[0] with args[1:] and returns its output and errno
// (0: success). Anything but success or an errno fails the test.
func (u *User) Do(t testing.TB, args ...string) (string, syscall.Errno) {
	t.Helper()
	return u.DoInput(t, nil, args...)
}

// DoInput is Do with stdin as the step's standard input.
func (u *User) DoInput(t testing.TB, stdin []byte, args ...string) (string, syscall.Errno) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CmdTimeout)
	defer cancel()
	cmd := u.command(ctx, args)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err == nil {
		return string(out), 0
	}
	if errno, ok := stepErrnoOf(err, string(out)); ok {
		return "", errno
	}
	t.Fatalf("step %v: %v: %s", args, err, out)
	return "", 0
}

// stepErrnoOf returns the errno a step process reported, if it did.
func stepErrnoOf(err error, out string) (syscall.Errno, bool) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != stepErrno {
		return 0, false
	}
	n, perr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(out), "errno="))
	return syscall.Errno(n), perr == nil
}

// Must runs a step that must succeed and returns its output.
func (u *User) Must(t testing.TB, args ...string) string {
	t.Helper()
	return u.MustInput(t, nil, args...)
}

// MustInput is Must with stdin as the step's standard input.
func (u *User) MustInput(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	out, errno := u.DoInput(t, stdin, args...)
	if errno != 0 {
		t.Fatalf("step %v: %v", args, errno)
	}
	return out
}

// Hold starts a step that ends in Hold and returns once it holds what it
// took, or with its errno; release ends the step and waits for it. The
// wait is bounded by CmdTimeout.
func (u *User) Hold(t testing.TB, args ...string) (release func(), errno syscall.Errno) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CmdTimeout)
	cmd := u.command(ctx, args)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); exited <- err }()
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(pr).ReadString('\n')
		first <- line
		io.Copy(io.Discard, pr)
	}()
	release = func() {
		stdin.Close()
		<-exited
		cancel()
	}
	var line string
	select {
	case line = <-first:
	case <-ctx.Done():
		release()
		t.Fatalf("step %v: no answer within %v", args, CmdTimeout)
	}
	if strings.TrimSpace(line) == heldLine {
		return release, 0
	}
	stdin.Close()
	err = <-exited
	cancel()
	if errno, ok := stepErrnoOf(err, line); ok {
		return func() {}, errno
	}
	t.Fatalf("step %v: %v: %q", args, err, line)
	return nil, 0
}

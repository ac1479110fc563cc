package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mntHelperSource is a tiny program that does one file operation as
// whatever user runs it, so tests can act as another user (nobody) or as
// another process (POSIX record locks belong to processes). It uses only
// the standard library and is built per test with the Go toolchain. It
// prints the result and exits 0, or prints "errno=N" and exits 3.
const mntHelperSource = `package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
)

// data returns s, or standard input for "-".
func data(s string) []byte {
	if s != "-" {
		return []byte(s)
	}
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	return b
}

func mode(s string) uint32 {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		fmt.Println("bad mode", s)
		os.Exit(2)
	}
	return uint32(m)
}

func num(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		fmt.Println("bad number", s)
		os.Exit(2)
	}
	return n
}

// hold reports "locked" and keeps the lock until stdin closes.
func hold() {
	fmt.Println("locked")
	bufio.NewReader(os.Stdin).ReadString('\n')
}

func run(a []string) error {
	switch a[0] {
	case "create":
		fd, err := syscall.Open(a[1], syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, mode(a[2]))
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		_, err = syscall.Write(fd, data(a[3]))
		return err
	case "write", "append":
		fl := syscall.O_WRONLY | syscall.O_TRUNC
		if a[0] == "append" {
			fl = syscall.O_WRONLY | syscall.O_APPEND
		}
		fd, err := syscall.Open(a[1], fl, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		_, err = syscall.Write(fd, data(a[2]))
		return err
	case "read":
		b, err := os.ReadFile(a[1])
		if err != nil {
			return err
		}
		os.Stdout.Write(b)
		return nil
	case "stat":
		var st syscall.Stat_t
		if err := syscall.Lstat(a[1], &st); err != nil {
			return err
		}
		fmt.Printf("%d %d %o %d", st.Uid, st.Gid, st.Mode, st.Size)
		return nil
	case "mkdir":
		return syscall.Mkdir(a[1], mode(a[2]))
	case "mkfifo":
		return syscall.Mkfifo(a[1], mode(a[2]))
	case "symlink":
		return syscall.Symlink(a[1], a[2])
	case "unlink":
		return syscall.Unlink(a[1])
	case "rmdir":
		return syscall.Rmdir(a[1])
	case "chmod":
		return syscall.Chmod(a[1], mode(a[2]))
	case "chown":
		return syscall.Lchown(a[1], int(num(a[2])), int(num(a[3])))
	case "rename":
		return syscall.Rename(a[1], a[2])
	case "utimes":
		return syscall.UtimesNano(a[1], []syscall.Timespec{{Sec: num(a[2])}, {Sec: num(a[2])}})
	case "truncate":
		return syscall.Truncate(a[1], num(a[2]))
	case "fallocate":
		fd, err := syscall.Open(a[1], syscall.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Fallocate(fd, uint32(num(a[2])), num(a[3]), num(a[4]))
	case "posixlock":
		fd, err := syscall.Open(a[1], syscall.O_RDWR, 0)
		if err != nil {
			return err
		}
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: num(a[2]), Len: num(a[3])}
		if err := syscall.FcntlFlock(uintptr(fd), syscall.F_SETLK, &lk); err != nil {
			return err
		}
		hold()
		return nil
	case "flock":
		fd, err := syscall.Open(a[1], syscall.O_RDONLY, 0)
		if err != nil {
			return err
		}
		if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			return err
		}
		hold()
		return nil
	}
	fmt.Println("unknown operation", a[0])
	os.Exit(2)
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if e, ok := err.(syscall.Errno); ok {
			fmt.Printf("errno=%d", int(e))
			os.Exit(3)
		}
		if pe, ok := err.(*os.PathError); ok {
			if e, ok := pe.Err.(syscall.Errno); ok {
				fmt.Printf("errno=%d", int(e))
				os.Exit(3)
			}
		}
		fmt.Println(err)
		os.Exit(1)
	}
}
`

// mntHelper runs the helper program as one user.
type mntHelper struct {
	bin  string
	cred *syscall.Credential // nil: as the test
}

// mntBuildHelper builds the helper program into dir, which must be
// reachable by every user the helper will run as.
func mntBuildHelper(t testing.TB, dir string) string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module mnthelper\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(mntHelperSource), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "mnthelper")
	ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build helper program: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func (h *mntHelper) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.Dir = "/"
	if h.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: h.cred}
	}
	cmd.WaitDelay = time.Second
	return cmd
}

// do runs one operation and returns its output and errno (0: success).
// Anything but success or an errno fails the test.
func (h *mntHelper) do(t testing.TB, args ...string) (string, syscall.Errno) {
	t.Helper()
	return h.doInput(t, nil, args...)
}

// doInput is do with stdin as the helper's standard input (data "-").
func (h *mntHelper) doInput(t testing.TB, stdin []byte, args ...string) (string, syscall.Errno) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
	defer cancel()
	cmd := h.command(ctx, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err == nil {
		return string(out), 0
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		if n, perr := strconv.Atoi(strings.TrimPrefix(string(out), "errno=")); perr == nil {
			return "", syscall.Errno(n)
		}
	}
	t.Fatalf("helper %v: %v: %s", args, err, out)
	return "", 0
}

// must runs one operation that must succeed and returns its output.
func (h *mntHelper) must(t testing.TB, args ...string) string {
	t.Helper()
	return h.mustInput(t, nil, args...)
}

// mustInput is must with stdin as the helper's standard input.
func (h *mntHelper) mustInput(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	out, errno := h.doInput(t, stdin, args...)
	if errno != 0 {
		t.Fatalf("helper %v: %v", args, errno)
	}
	return out
}

// hold starts a lock operation ("posixlock", "flock") in a helper process
// and returns once the helper holds the lock, or with its errno; release
// ends the helper and waits for it. The wait is bounded.
func (h *mntHelper) hold(t testing.TB, args ...string) (release func(), errno syscall.Errno) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mntCmdTimeout)
	cmd := h.command(ctx, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		first <- line
		io.Copy(io.Discard, stdout)
	}()
	release = func() {
		stdin.Close()
		cmd.Wait()
		cancel()
	}
	var line string
	select {
	case line = <-first:
	case <-ctx.Done():
		release()
		t.Fatalf("helper %v: no answer within %v", args, mntCmdTimeout)
	}
	if strings.TrimSpace(line) == "locked" {
		return release, 0
	}
	release()
	if n, perr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "errno=")); perr == nil {
		return func() {}, syscall.Errno(n)
	}
	t.Fatalf("helper %v: %q", args, line)
	return nil, 0
}

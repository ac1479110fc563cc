package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/mountinfo"
)

// Bounds on waiting for mounts and daemons.
const (
	mountTimeout = 60 * time.Second // daemon start until the mount shows
	stopTimeout  = 15 * time.Second // SIGTERM until unmounted and exited
	killTimeout  = 5 * time.Second  // SIGKILL until exited
	cmdTimeout   = 60 * time.Second // one kmsfs init
	pollPause    = 5 * time.Millisecond
)

// mountInfo returns the mount points in this mount namespace and their
// filesystem types.
func mountInfo() (map[string]string, error) {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, mt := range ms {
		m[mt.Point] = mt.FSType
	}
	return m, nil
}

// isMounted reports whether path is a mount point, and its type.
func isMounted(path string) (bool, string) {
	m, err := mountInfo()
	if err != nil {
		return false, ""
	}
	typ, ok := m[path]
	return ok, typ
}

// mountsUnder returns the mount points at or below dir.
func mountsUnder(dir string) []string {
	m, _ := mountInfo()
	var under []string
	for p := range m {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			under = append(under, p)
		}
	}
	return under
}

// mountTmpfs mounts a tmpfs of size (mount(8) syntax: "6G") at dir.
func mountTmpfs(dir, size string) error {
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// forceUnmount removes the mount at dir: MNT_FORCE first (it aborts a
// FUSE connection whose daemon is stuck), lazily if it is still busy.
func forceUnmount(dir string) error {
	unix.Unmount(dir, unix.MNT_FORCE)
	if ok, _ := isMounted(dir); !ok {
		return nil
	}
	if unix.Unmount(dir, 0) == nil {
		return nil
	}
	return unix.Unmount(dir, unix.MNT_DETACH)
}

// daemon is a FUSE daemon started by this program in the foreground, so
// that its pid is the process serving the mount.
type daemon struct {
	name   string // "kmsfs" or "loopback"
	mnt    string
	log    string // its stdout and stderr
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait returned

	bin       string // what started it, for restart
	args, env []string
}

// restart stops the daemon and starts it again on the same mount point,
// with its log in a new file: the new daemon starts with empty caches
// (kmsfs: no data keys).
func (d *daemon) restart(ctx context.Context) (*daemon, error) {
	if err := d.stop(); err != nil {
		return nil, err
	}
	return startDaemon(ctx, d.name, d.bin, d.args, d.env, d.mnt, d.log+".restart")
}

// startDaemon runs bin with args (which mount at mnt in the foreground)
// with env added, output to logPath, and waits, bounded, until mnt is a
// FUSE mount. The daemon gets its own process group (a ^C reaches only
// this program, which unmounts in order) and SIGTERM if this program dies.
func startDaemon(ctx context.Context, name, bin string, args, env []string, mnt, logPath string) (*daemon, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, mnt: mnt, log: logPath, cmd: cmd, exited: make(chan struct{}), bin: bin, args: args, env: env}
	go func() { cmd.Wait(); close(d.exited) }()

	deadline := time.Now().Add(mountTimeout)
	for {
		if ok, typ := isMounted(mnt); ok && strings.HasPrefix(typ, "fuse") {
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("%s exited before mounting %s (%v):\n%s", name, mnt, cmd.ProcessState, d.logTail())
		default:
		}
		if err := ctx.Err(); err != nil || time.Now().After(deadline) {
			d.stop()
			if err == nil {
				err = fmt.Errorf("%s did not mount %s within %v:\n%s", name, mnt, mountTimeout, d.logTail())
			}
			return nil, err
		}
		time.Sleep(pollPause) // between bounded checks of mountinfo
	}
}

// pid returns the daemon's process ID.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop asks the daemon to unmount (SIGTERM) and waits, bounded, until the
// mount is gone and the daemon has exited; past the bound it forces the
// unmount and kills the daemon, and reports that.
func (d *daemon) stop() error {
	select {
	case <-d.exited:
		if ok, _ := isMounted(d.mnt); ok {
			return errors.Join(fmt.Errorf("%s exited but %s is still mounted", d.name, d.mnt), forceUnmount(d.mnt))
		}
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-d.exited:
		if ok, _ := isMounted(d.mnt); !ok {
			return nil
		}
	case <-timer.C:
	}
	err := fmt.Errorf("%s (pid %d) did not unmount %s and exit within %v of SIGTERM; forcing", d.name, d.pid(), d.mnt, stopTimeout)
	ferr := forceUnmount(d.mnt)
	d.cmd.Process.Kill()
	select {
	case <-d.exited:
	case <-time.After(killTimeout):
		ferr = errors.Join(ferr, fmt.Errorf("%s (pid %d) still running %v after SIGKILL", d.name, d.pid(), killTimeout))
	}
	return errors.Join(err, ferr)
}

// logTail returns the last lines of the daemon's output.
func (d *daemon) logTail() string {
	raw, err := os.ReadFile(d.log)
	if err != nil {
		return err.Error()
	}
	const max = 4 << 10
	if len(raw) > max {
		raw = raw[len(raw)-max:]
	}
	return strings.TrimSpace(string(raw))
}

// runCmd runs bin with args and env added, bounded by cmdTimeout and ctx,
// and returns an error with its combined output if it fails.
func runCmd(ctx context.Context, env []string, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", bin, strings.Join(args, " "), err, out)
	}
	return nil
}

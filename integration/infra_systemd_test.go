package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/sdnotify"
)

// Bounds of the tests of kmsfs under a service manager.
const (
	// sdReadyTimeout bounds `kmsfs mount -f` until it sends READY=1.
	sdReadyTimeout = 30 * time.Second
	// sdAckTimeout bounds waiting for the writer's next acknowledgements.
	sdAckTimeout = 30 * time.Second
	// fuseSuperMagic is statfs's f_type of a FUSE mount.
	fuseSuperMagic = 0x65735546
)

// sdListen listens on a datagram socket as a service manager does, at a
// path or an abstract address (kind "path" or "abstract"), and returns it
// with the $NOTIFY_SOCKET value that names it.
func sdListen(t *testing.T, kind string) (*net.UnixConn, string) {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "notify")
	if kind == "abstract" {
		addr = "@kmsfs-test-notify-" + rand.Text()
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addr
}

// sdRecv returns the next notification, waiting at most sdReadyTimeout;
// it fails the test early if the foreground process of v exits first.
func sdRecv(t *testing.T, c *net.UnixConn, v *fusetest.CLIVolume) string {
	t.Helper()
	buf := make([]byte, 4096)
	deadline := time.Now().Add(sdReadyTimeout)
	for time.Now().Before(deadline) {
		// Short reads in turn with checks of the process: a kmsfs that
		// died without notifying fails the test now, not at the bound.
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("reading the notify socket: %v", err)
		}
		if v.ForegroundExited() {
			// It may have sent its last message just before exiting.
			if msg, ok := sdTryRecv(t, c); ok {
				return msg
			}
			t.Fatalf("kmsfs mount -f exited without notifying\n%s", v.LogText())
		}
	}
	t.Fatalf("no notification within %v\n%s", sdReadyTimeout, v.LogText())
	return ""
}

// sdTryRecv returns a notification waiting on c, without waiting. (A read
// deadline in the past would not do: Go then fails the read before it
// looks at the socket.)
func sdTryRecv(t *testing.T, c *net.UnixConn) (string, bool) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n := -1
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
	}); err != nil {
		t.Fatal(err)
	}
	if rerr == unix.EAGAIN {
		return "", false
	}
	if rerr != nil {
		t.Fatalf("reading the notify socket: %v", rerr)
	}
	return string(buf[:n]), true
}

// sdNothingQueued fails the test if a notification is waiting on c.
func sdNothingQueued(t *testing.T, c *net.UnixConn) {
	t.Helper()
	if msg, ok := sdTryRecv(t, c); ok {
		t.Fatalf("unexpected notification %q", msg)
	}
}

// sdSignal sends sig to the process serving v's mount.
func sdSignal(t *testing.T, v *fusetest.CLIVolume, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(v.PID(), sig); err != nil {
		t.Fatalf("kill -%v %d: %v", sig, v.PID(), err)
	}
}

// TestSystemdNotify runs `kmsfs mount -f` as a Type=notify unit does,
// with $NOTIFY_SOCKET naming a socket the test listens on: READY=1 must
// come only once the mount answers (a unit ordered after it would
// otherwise find an empty directory), and SIGTERM must send STOPPING=1,
// unmount and exit 0 (SIGINT too); an unmount from outside sends
// STOPPING=1 as well. A background mount sends nothing: the service
// manager knows only the parent, which exits once the mount is up.
func TestSystemdNotify(t *testing.T) {
	cases := []struct {
		socket     string
		foreground bool
		stop       string // SIGTERM, SIGINT or unmount (kmsfs unmount)
	}{
		{"path", true, "SIGTERM"},
		{"abstract", true, "SIGTERM"},
		{"path", true, "SIGINT"},
		{"path", true, "unmount"},
		{"path", false, "unmount"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("socket=%s,foreground=%v,stop=%s", c.socket, c.foreground, c.stop), func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			sock, addr := sdListen(t, c.socket)
			v.Env = append(v.Env, sdnotify.SocketEnv+"="+addr)
			if !c.foreground {
				v.Mount(t)
				v.Unmount(t) // returns once the daemon has exited
				sdNothingQueued(t, sock)
				return
			}
			v.StartForeground(t)
			msg := sdRecv(t, sock, v)
			var st unix.Statfs_t
			if err := unix.Statfs(v.Mnt, &st); err != nil || st.Type != fuseSuperMagic {
				t.Fatalf("at READY=1, statfs %s: type %#x, %v; want the FUSE mount (%#x)", v.Mnt, st.Type, err, fuseSuperMagic)
			}
			if want := "READY=1\nSTATUS=serving " + v.Cipher + " at " + v.Mnt; msg != want {
				t.Fatalf("first notification %q, want %q", msg, want)
			}
			mntWriteFile(t, v.Path("f"), []byte("notified"))
			mntCheckFile(t, v.Path("f"), []byte("notified"))
			switch c.stop {
			case "unmount":
				v.Unmount(t) // fails unless kmsfs mount -f exits 0
			case "SIGINT":
				sdSignal(t, v, syscall.SIGINT)
				fusetest.Eventually(t, "kmsfs mount -f exits on SIGINT", fusetest.ExitTimeout, v.ForegroundExited)
				fallthrough
			default:
				if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
					t.Fatalf("kmsfs mount -f after %s: %v, want exit 0\n%s", c.stop, err, v.LogText())
				}
			}
			if want, msg := "STOPPING=1\nSTATUS=unmounting "+v.Mnt, sdRecv(t, sock, v); msg != want {
				t.Fatalf("notification after %s %q, want %q", c.stop, msg, want)
			}
			if fusetest.IsMounted(t, v.Mnt) {
				t.Fatalf("still mounted after kmsfs mount -f exited (%s)", c.stop)
			}
			sdNothingQueued(t, sock)
		})
	}
}

// sdRecord is record n of fsyncwriter (testdata/fsyncwriter).
func sdRecord(n, size int) []byte {
	unit := fmt.Sprintf("record %08d|", n)
	return bytes.Repeat([]byte(unit), size/len(unit)+1)[:size]
}

// sdWriter is a running fsyncwriter: acks carries the number of each
// record whose fsync returned, then closes when the writer has closed its
// file; a failure it reports fails the test.
type sdWriter struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	last  int // the last acknowledged record, -1 before the first
}

// startWriter builds fsyncwriter into dir and starts it on path, as cred
// (nil: as the test).
func startWriter(t *testing.T, dir string, cred *syscall.Credential, path string, size, maxRecords int) *sdWriter {
	t.Helper()
	bin := filepath.Join(dir, "fsyncwriter")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./testdata/fsyncwriter").CombinedOutput(); err != nil {
		t.Fatalf("go build fsyncwriter: %v\n%s", err, out)
	}
	w := &sdWriter{cmd: exec.Command(bin, path, strconv.Itoa(size), strconv.Itoa(maxRecords)), lines: make(chan string, 1024), last: -1}
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var err error
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stderr = os.Stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		w.stdin.Close()
		w.cmd.Process.Kill()
		w.cmd.Wait()
	})
	return w
}

// waitFor reads the writer's lines, bounded by sdAckTimeout, until one
// satisfies done; it returns false if the writer ended first.
func (w *sdWriter) waitFor(t *testing.T, what string, done func(line string) bool) bool {
	t.Helper()
	timeout := time.After(sdAckTimeout)
	for {
		select {
		case line, ok := <-w.lines:
			if !ok {
				return false
			}
			if strings.HasPrefix(line, "error") {
				t.Fatalf("writer: %s (last acknowledged record %d)", line, w.last)
			}
			if n, ok := strings.CutPrefix(line, "ack "); ok {
				w.last, _ = strconv.Atoi(n)
			}
			if done(line) {
				return true
			}
		case <-timeout:
			t.Fatalf("writer: %s not reached within %v (last acknowledged record %d)", what, sdAckTimeout, w.last)
		}
	}
}

// waitAck waits until record n is acknowledged.
func (w *sdWriter) waitAck(t *testing.T, n int) {
	t.Helper()
	if !w.waitFor(t, fmt.Sprintf("ack %d", n), func(string) bool { return w.last >= n }) {
		t.Fatalf("writer ended before acknowledging record %d (last %d)", n, w.last)
	}
}

// finish closes the writer's input and waits until it has closed its
// file and exited.
func (w *sdWriter) finish(t *testing.T) {
	t.Helper()
	w.stdin.Close()
	if !w.waitFor(t, "closed", func(line string) bool { return line == "closed" }) {
		t.Fatalf("writer ended without closing its file (last acknowledged record %d)", w.last)
	}
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// TestSystemdStopWithWriter stops a mount the way systemd does, with
// SIGTERM, while another process writes records to it and fsyncs each:
// the mount point must be freed at once (lazily unmounted), the writer
// must go on being served until it closes its file, kmsfs must then exit
// 0, and after a remount every record whose fsync returned must be there,
// intact, with the journal clean. Before, a busy mount stayed mounted and
// running, and systemd's SIGKILL after its stop timeout left a dead mount.
// An ordinary user's mount (a user unit) unmounts through fusermount3.
func TestSystemdStopWithWriter(t *testing.T) {
	const (
		beforeStop = 20      // records acknowledged before SIGTERM
		afterStop  = 20      // and after the mount point is freed
		maxRecords = 1 << 20 // bounds the writer's loop
	)
	cases := []struct {
		user string
		size int
	}{
		{"root", 100},
		{"root", 5000},
		{"nobody", 5000},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("user=%s,record=%d", c.user, c.size), func(t *testing.T) {
			size := c.size
			o := fusetest.CLIOptions{}
			socket := "path"
			if c.user == "nobody" {
				fusetest.NeedFUSEForUsers(t)
				o.Cred, o.Dir = fusetest.NobodyCred(), fusetest.SharedDir(t)
				socket = "abstract" // no directory of the test's to enter
			}
			v := suite.InitVolume(t, o)
			sock, addr := sdListen(t, socket)
			v.Env = append(v.Env, sdnotify.SocketEnv+"="+addr)
			v.StartForeground(t)
			if msg := sdRecv(t, sock, v); !strings.HasPrefix(msg, sdnotify.Ready) {
				t.Fatalf("first notification %q, want READY=1", msg)
			}
			w := startWriter(t, v.Dir, o.Cred, v.Path("records"), size, maxRecords)
			w.waitAck(t, beforeStop)

			mark := v.LogMark()
			sdSignal(t, v, syscall.SIGTERM)
			if msg := sdRecv(t, sock, v); !strings.HasPrefix(msg, sdnotify.Stopping) {
				t.Fatalf("notification after SIGTERM %q, want STOPPING=1", msg)
			}
			fusetest.Eventually(t, "the mount point is freed after SIGTERM", fusetest.ExitTimeout, func() bool { return !fusetest.IsMounted(t, v.Mnt) })
			w.waitAck(t, w.last+afterStop)
			if v.ForegroundExited() {
				t.Fatalf("kmsfs exited while the writer still had its file open\n%s", v.LogText())
			}
			w.finish(t)
			fusetest.Eventually(t, "kmsfs exits once the writer has closed its file", fusetest.ExitTimeout, v.ForegroundExited)
			if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
				t.Fatalf("kmsfs mount -f after SIGTERM: %v, want exit 0\n%s", err, v.LogText())
			}
			if !v.LogHas(mark, func(l fusetest.LogLine) bool { return strings.HasPrefix(l.F["msg"], "unmounted lazily") }) {
				t.Errorf("the log does not say the busy mount was unmounted lazily:\n%s", v.LogText())
			}

			mark = v.LogMark()
			v.MountForeground(t)
			for _, l := range v.LogSince(mark) {
				if strings.HasPrefix(l.F["msg"], "journal:") {
					t.Errorf("the journal was not left clean: %s", l.Raw)
				}
			}
			// The mount's user reads: a mount without --allow-other
			// shuts out everyone else, root too.
			got := []byte(suite.User(t, o.Cred).Must(t, "read", v.Path("records")))
			if want := (w.last + 1) * size; len(got) != want {
				t.Errorf("file holds %d bytes, want %d: %d records written, each acknowledged", len(got), want, w.last+1)
			}
			for n := 0; n <= w.last; n++ {
				if (n+1)*size > len(got) {
					t.Fatalf("acknowledged record %d of %d is missing", n, w.last)
				}
				if rec := got[n*size : (n+1)*size]; !bytes.Equal(rec, sdRecord(n, size)) {
					t.Fatalf("acknowledged record %d differs: %.40q…", n, rec)
				}
			}
		})
	}
}

// logMsgs returns the msg field of every line of the log file at path.
func logMsgs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		msgs = append(msgs, fusetest.ParseLogLine(line).F["msg"])
	}
	return msgs
}

// TestSystemdHUPReopensLog rotates the log file as logrotate does: rename
// it, then SIGHUP. Lines logged before the signal must stay in the renamed
// file, lines after it go to a new file at the original path, and the
// mount must go on serving. Without --log-file, SIGHUP changes nothing
// (a hangup of the terminal must not stop a mount).
func TestSystemdHUPReopensLog(t *testing.T) {
	for _, logFile := range []bool{true, false} {
		t.Run(fmt.Sprintf("log-file=%v", logFile), func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			sock, addr := sdListen(t, "path")
			v.Env = append(v.Env, sdnotify.SocketEnv+"="+addr)
			path := filepath.Join(v.Dir, "daemon.log")
			var extra []string
			if logFile {
				extra = []string{"--log-file", path}
			}
			logPath := v.Log
			if logFile {
				logPath = path
			}
			v.StartForeground(t, extra...)
			sdRecv(t, sock, v)
			mntWriteFile(t, v.Path("before"), []byte("before"))
			// The mount's background key check logs once; wait for it, so
			// that no line of the mount's start is still to come when the
			// log is rotated.
			fusetest.Eventually(t, "the key check after mounting", fusetest.CmdTimeout, func() bool {
				b, err := os.ReadFile(logPath)
				return err == nil && bytes.Contains(b, []byte("msg=\"key check"))
			})

			if !logFile {
				mark := v.LogMark()
				sdSignal(t, v, syscall.SIGHUP)
				fusetest.Eventually(t, "SIGHUP is logged", fusetest.ExitTimeout, func() bool {
					return v.LogHas(mark, func(l fusetest.LogLine) bool { return l.F["msg"] == "SIGHUP: no --log-file to reopen" })
				})
				mntCheckFile(t, v.Path("before"), []byte("before"))
				if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
					t.Fatalf("kmsfs mount -f after SIGHUP and SIGTERM: %v, want exit 0\n%s", err, v.LogText())
				}
				return
			}

			rotated := path + ".1"
			if err := os.Rename(path, rotated); err != nil {
				t.Fatal(err)
			}
			sdSignal(t, v, syscall.SIGHUP)
			fusetest.Eventually(t, "a new log file at the original path", fusetest.ExitTimeout, func() bool {
				b, err := os.ReadFile(path)
				return err == nil && bytes.Contains(b, []byte("log file reopened"))
			})
			mntWriteFile(t, v.Path("after"), []byte("after"))
			mntCheckFile(t, v.Path("before"), []byte("before"))
			if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
				t.Fatalf("kmsfs mount -f after SIGHUP and SIGTERM: %v, want exit 0\n%s", err, v.LogText())
			}

			old, cur := logMsgs(t, rotated), logMsgs(t, path)
			for _, c := range []struct {
				file      string
				msgs      []string
				want, not []string
			}{
				{rotated, old, []string{"mounted", "SIGHUP: reopening the log file"}, []string{"log file reopened", "unmounting", "unmounted"}},
				{path, cur, []string{"log file reopened", "unmounting", "unmounted"}, []string{"mounted", "SIGHUP: reopening the log file"}},
			} {
				for _, m := range c.want {
					if !slices.Contains(c.msgs, m) {
						t.Errorf("%s lacks %q: %q", filepath.Base(c.file), m, c.msgs)
					}
				}
				for _, m := range c.not {
					if slices.Contains(c.msgs, m) {
						t.Errorf("%s has %q: %q", filepath.Base(c.file), m, c.msgs)
					}
				}
			}
			if msgs := old; len(msgs) == 0 || msgs[len(msgs)-1] != "SIGHUP: reopening the log file" {
				t.Errorf("the rotated log does not end with the reopen: %q", msgs)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("new log file: %v, %v; want mode 0600 (log lines name files and keys)", fi.Mode(), err)
			}
		})
	}
}

// TestSystemdUnitsVerify checks the shipped systemd units with
// systemd-analyze verify, the binary they start pointed at the one under
// test. Only where systemd's tools are installed: the units are examples,
// and no test installs systemd.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	units, err := filepath.Glob("../docs/systemd/*.*")
	if err != nil {
		t.Fatal(err)
	}
	units = slices.DeleteFunc(units, func(p string) bool {
		return !strings.HasSuffix(p, ".service") && !strings.HasSuffix(p, ".mount")
	})
	if len(units) < 2 {
		t.Fatalf("docs/systemd holds %d units (%q), want a service and a mount unit", len(units), units)
	}
	dir := t.TempDir()
	for _, unit := range units {
		t.Run("unit="+filepath.Base(unit), func(t *testing.T) {
			b, err := os.ReadFile(unit)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte("/usr/local/bin/kmsfs")) && strings.HasSuffix(unit, ".service") {
				t.Fatalf("%s does not start /usr/local/bin/kmsfs", unit)
			}
			p := filepath.Join(dir, filepath.Base(unit))
			b = bytes.ReplaceAll(b, []byte("/usr/local/bin/kmsfs"), []byte(suite.Kmsfs(t)))
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", p).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Fatalf("systemd-analyze verify %s: %v\n%s", filepath.Base(unit), err, out)
			}
		})
	}
}

// TestDaemonCrashLeavesTrace: a background mount's stderr is /dev/null, so
// a daemon that dies of a fatal error (here SIGQUIT, which ends a Go
// program with the goroutine dump that a panic or a runtime fatal error
// prints) must leave its traceback in --log-file, also after SIGHUP has
// reopened the log at a new file, and not vanish without a line.
func TestDaemonCrashLeavesTrace(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(fmt.Sprintf("rotated=%v", rotate), func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			v.Mount(t)
			mntWriteFile(t, v.Path("f"), []byte("before the crash"))
			if rotate {
				if err := os.Rename(v.Log, v.Log+".1"); err != nil {
					t.Fatal(err)
				}
				syscall.Kill(v.PID(), syscall.SIGHUP)
				fusetest.Eventually(t, "a new log file at the original path", fusetest.ExitTimeout, func() bool {
					b, err := os.ReadFile(v.Log)
					return err == nil && bytes.Contains(b, []byte("log file reopened"))
				})
			}
			v.KillWith(t, syscall.SIGQUIT)
			v.Detach(t)
			log := v.LogText()
			for _, want := range []string{"SIGQUIT: quit", "goroutine "} {
				if !strings.Contains(log, want) {
					t.Errorf("log of the crashed daemon lacks %q:\n%s", want, log)
				}
			}
			if rotate {
				if b, err := os.ReadFile(v.Log + ".1"); err != nil || bytes.Contains(b, []byte("SIGQUIT")) {
					t.Errorf("rotated log: %v; the traceback went to the old file:\n%s", err, b)
				}
			}
			v.Mount(t)
			mntCheckFile(t, v.Path("f"), []byte("before the crash"))
		})
	}
}

// Package fusetest is kmsfs's one test harness: it mounts volumes in
// process (fs.Mount over a volume.Volume or test keys) and through the
// kmsfs binary, starts the local-kms and SoftHSM fixtures, collects logs,
// polls with a bound, and runs a step of a test as another user by running
// the test binary again.
//
// Under CI=true a test that cannot mount, reach the emulator or open the
// token fails; elsewhere it skips. No function here changes the host's
// device permissions: a machine whose /dev/fuse ordinary users cannot open
// fails the tests that need it (under CI) with a message that says so.
package fusetest

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FUSEDevice is the kernel's FUSE device.
const FUSEDevice = "/dev/fuse"

// PollPause is the pause between two checks of Eventually.
const PollPause = 5 * time.Millisecond

// CI reports whether the tests run under CI=true, where nothing skips.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable stops t because something the test needs is missing: it
// fails under CI=true and skips elsewhere, with the same message.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI=true: failing, not skipping)", msg)
	}
	t.Skip(msg)
}

// NeedFUSE stops t (Unavailable) unless this process can open the FUSE
// device.
func NeedFUSE(t testing.TB) {
	t.Helper()
	fd, err := unix.Open(FUSEDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		Unavailable(t, "cannot open %s: %v", FUSEDevice, err)
		return
	}
	unix.Close(fd)
}

// NeedFUSEForUsers stops t (Unavailable) unless every user may open the
// FUSE device, as fusermount3 needs for an unprivileged mount. Debian's
// udev rule makes it 0666; a container may leave it 0600, and then the
// machine's setup (.ci/run), not a test, must open it up.
func NeedFUSEForUsers(t testing.TB) {
	t.Helper()
	NeedFUSE(t)
	fi, err := os.Stat(FUSEDevice)
	if err != nil {
		Unavailable(t, "%s: %v", FUSEDevice, err)
		return
	}
	if fi.Mode().Perm()&0o006 != 0o006 {
		Unavailable(t, "%s is %04o: ordinary users cannot open it for fusermount3 (chmod 0666 it, as Debian's udev rule does)", FUSEDevice, fi.Mode().Perm())
	}
}

// Poll checks cond until it holds or timeout has passed, pausing
// PollPause between checks; it reports whether cond held.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(PollPause) // between bounded checks, not synchronisation
	}
	return true
}

// Eventually fails t unless cond holds within timeout.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("%s: not reached within %v", what, timeout)
	}
}

// LogBuffer is a log sink that tests read while a mount writes to it. It
// is safe for concurrent use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Mark returns the current end of the log, for Since.
func (l *LogBuffer) Mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// Since returns what was written after mark.
func (l *LogBuffer) Since(mark int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b.Bytes()
	return string(b[min(mark, len(b)):])
}

// Tail returns at most the last n bytes written.
func (l *LogBuffer) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b.Bytes()
	return string(b[max(0, len(b)-n):])
}

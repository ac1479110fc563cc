package fs_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// TestNamesEmptyDirLostID: an rmdir, or a rename of a directory over an
// empty one, removes the empty directory's kmsfs.dirid first (the backing
// directory must be empty to go), so a crash right after leaves the
// directory there, empty, without its ID. That is its old state, and it
// must list as such, with no error, and take new entries that a later
// mount still finds; a directory with entries that lost its ID still
// fails (TestNamesTampered).
func TestNamesEmptyDirLostID(t *testing.T) {
	long := strings.Repeat("l", 200)
	for _, tc := range []struct {
		crash string
		setup []string // files made in d before the crash (then unlinked behind the mount)
	}{
		{"rmdir", nil},
		{"rmdir,orphan-long-name-side", []string{long}},
	} {
		t.Run("crash="+tc.crash, func(t *testing.T) {
			m, c := mountNames(t)
			if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			var backings []string
			for _, f := range tc.setup {
				if err := os.WriteFile(m.Path("d/"+f), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				backings = append(backings, cipherPath(t, m, c, "d/"+f))
			}
			m.Unmount()
			// An unlink cut off after its entry went (the long name's side
			// file stays), then the rmdir cut off after the ID went.
			for _, b := range backings {
				if err := os.Remove(b); err != nil {
					t.Fatal(err)
				}
			}
			dir := cipherPath(t, m, c, "d")
			if err := os.Remove(filepath.Join(dir, names.DirIDFile)); err != nil {
				t.Fatal(err)
			}
			mark := m.Log.Mark()
			m.Mount()
			if got := list(t, m.Path("d")); len(got) != 0 {
				t.Errorf("d lists %q after the crash, want nothing", got)
			}
			if err := os.WriteFile(m.Path("d/"+long), []byte("after"), 0o644); err != nil {
				t.Fatalf("create in d after the crash: %v", err)
			}
			if log := m.Log.Since(mark); strings.Contains(log, "level=error") {
				t.Errorf("the mount logged an error for an empty directory:\n%s", log)
			}
			m.Remount()
			if got := list(t, m.Path("d")); !slices.Equal(got, []string{long}) {
				t.Errorf("d lists %d names after a remount, want the one made", len(got))
			}
			if b, err := os.ReadFile(m.Path("d/" + long)); err != nil || string(b) != "after" {
				t.Errorf("read the file made after the crash: %q, %v", b, err)
			}
		})
	}
}

// TestNamesExchangeLongTargetOrder: an exchange of a symlink whose target
// is in a side file with one whose target is in its entry copies the side
// file to the other name before the entries swap and removes the old one
// after, so that a crash between the steps never leaves the name that
// gets the long target's symlink without its side file (its readlink
// would fail, or read an old orphan's target). inotify on the cipher dir
// shows the steps in the order the daemon made them.
func TestNamesExchangeLongTargetOrder(t *testing.T) {
	for _, long := range []string{"a", "b"} {
		t.Run("long="+long, func(t *testing.T) {
			m, c := mountNames(t)
			targets := map[string]string{"a": "short", "b": "short"}
			targets[long] = strings.Repeat("t", names.MaxTargetLen)
			for name, target := range targets {
				if err := os.Symlink(target, m.Path(name)); err != nil {
					t.Fatal(err)
				}
			}
			short := "a"
			if long == "a" {
				short = "b"
			}
			longB, shortB := filepath.Base(cipherPath(t, m, c, long)), filepath.Base(cipherPath(t, m, c, short))
			in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(in)
			if _, err := unix.InotifyAddWatch(in, m.Cipher, unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_CREATE|unix.IN_DELETE); err != nil {
				t.Fatal(err)
			}
			if err := unix.Renameat2(unix.AT_FDCWD, m.Path("a"), unix.AT_FDCWD, m.Path("b"), unix.RENAME_EXCHANGE); err != nil {
				t.Fatalf("exchange: %v", err)
			}
			// The daemon made every step before it answered.
			events := inotifyEvents(t, in)
			first := func(name string, mask uint32) int {
				return slices.IndexFunc(events, func(e inotifyEvent) bool { return e.name == name && e.mask&mask != 0 })
			}
			moved := uint32(unix.IN_MOVED_FROM | unix.IN_MOVED_TO)
			swap := min(first(longB, moved), first(shortB, moved))
			side := first(shortB+".target", unix.IN_MOVED_TO|unix.IN_CREATE)
			gone := first(longB+".target", unix.IN_DELETE|unix.IN_MOVED_FROM)
			if swap < 0 || side < 0 || gone < 0 || side > swap || gone < swap {
				t.Errorf("cipher dir events %v: want the side file made under the short target's name (at %d) before the entries swap (at %d), and removed under the long one's (at %d) after",
					events, side, swap, gone)
			}
			m.Remount()
			for name, want := range map[string]string{"a": targets["b"], "b": targets["a"]} {
				if got, err := os.Readlink(m.Path(name)); err != nil || got != want {
					t.Errorf("readlink %s: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
				}
			}
		})
	}
}

// inotifyEvent is one event of an inotify descriptor: its mask and the
// name in the watched directory.
type inotifyEvent struct {
	mask uint32
	name string
}

func (e inotifyEvent) String() string { return fmt.Sprintf("%#x:%s", e.mask, e.name) }

// inotifyEvents reads the events queued on the non-blocking inotify
// descriptor in.
func inotifyEvents(t *testing.T, in int) []inotifyEvent {
	t.Helper()
	var events []inotifyEvent
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(in, buf)
		if errors.Is(err, unix.EAGAIN) {
			return events
		}
		if err != nil {
			t.Fatalf("read inotify events: %v", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
			mask := binary.NativeEndian.Uint32(b[4:])
			l := int(binary.NativeEndian.Uint32(b[12:]))
			name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+l]), "\x00")
			events = append(events, inotifyEvent{mask, name})
			b = b[unix.SizeofInotifyEvent+l:]
		}
	}
}

package fusetest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/internal/procfd"
)

// inProcessKinds are the two ways to mount in process.
var inProcessKinds = []struct {
	name  string
	mount func(testing.TB, int, kfs.Options) *fusetest.InProcess
}{
	{"fs", fusetest.MountFS},
	{"volume", fusetest.MountVolume},
}

// TestInProcessCycle: data written survives Remount; Unmount leaves no
// descriptor into the cipher dir (journal, key sources, directories all
// closed), so the volume mounts again, where a journal left open would
// refuse a second read-write opener.
func TestInProcessCycle(t *testing.T) {
	for _, k := range inProcessKinds {
		for _, bs := range []int{4096, 64 << 10} {
			t.Run(fmt.Sprintf("kind=%s,bs=%d", k.name, bs), func(t *testing.T) {
				m := k.mount(t, bs, kfs.Options{})
				data := bytes.Repeat([]byte("fusetest plaintext "), bs/8)
				if err := os.WriteFile(m.Path("f"), data, 0o644); err != nil {
					t.Fatal(err)
				}
				m.Remount()
				check := func(when string) {
					t.Helper()
					got, err := os.ReadFile(m.Path("f"))
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("%s: read back %d of %d bytes: %v", when, len(got), len(data), err)
					}
				}
				check("after Remount")
				raw, err := os.ReadFile(filepath.Join(m.Cipher, "f"))
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(raw, data[:32]) {
					t.Fatal("the cipher file holds plaintext")
				}
				m.Unmount()
				if open := procfd.Under(t, m.Cipher); len(open) > 0 {
					t.Errorf("after Unmount %d descriptors into the cipher dir are open: %v", len(open), open)
				}
				if _, err := os.Stat(m.Path("f")); err == nil {
					t.Error("the file is still visible at the mount point after Unmount")
				}
				m.Mount()
				check("mounted again")
			})
		}
	}
}

// failedTB is a test that has failed, and keeps what it logs.
type failedTB struct {
	testing.TB
	logged []string
}

func (f *failedTB) Failed() bool { return true }

func (f *failedTB) Logf(format string, args ...any) {
	f.logged = append(f.logged, fmt.Sprintf(format, args...))
}

// TestInProcessFailedLogs: when a test fails, the cleanup unmounts and
// prints the end of the mount's log, where the failed operation is.
func TestInProcessFailedLogs(t *testing.T) {
	for _, k := range inProcessKinds {
		t.Run("kind="+k.name, func(t *testing.T) {
			ft := &failedTB{TB: t}
			var dir string
			// Registered first, so it runs after the harness's cleanup.
			t.Cleanup(func() {
				all := strings.Join(ft.logged, "\n")
				if !strings.Contains(all, "kmsfs log") || !strings.Contains(all, "op=read") {
					t.Errorf("a failed test logged %q, want the mount's log with the failed read", all)
				}
				if _, mounted, err := mountinfo.Lookup(dir); err != nil || mounted {
					t.Errorf("%s is still mounted after the cleanup (%v)", dir, err)
				}
			})
			m := k.mount(ft, 4096, kfs.Options{})
			dir = m.Dir
			if err := os.WriteFile(m.Path("f"), bytes.Repeat([]byte("x"), 3*4096), 0o644); err != nil {
				t.Fatal(err)
			}
			// An edited cipher file: its last block no longer authenticates.
			cf := filepath.Join(m.Cipher, "f")
			raw, err := os.ReadFile(cf)
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)-20] ^= 1
			if err := os.WriteFile(cf, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			m.Remount() // drops the cached plaintext
			if _, err := os.ReadFile(m.Path("f")); err == nil {
				t.Fatal("read of an edited cipher file succeeded")
			}
		})
	}
}

func TestKeys(t *testing.T) {
	var k fusetest.Keys
	ctx := context.Background()
	dk, stanzas, err := k.NewDataKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(dk)
	clear(dk) // the caller owns the key it got
	got, err := k.UnwrapKey(ctx, stanzas)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("UnwrapKey = %x, %v; want the key NewDataKey made", got, err)
	}
	other, _, err := k.NewDataKey(ctx)
	if err != nil || bytes.Equal(other, want) {
		t.Fatalf("a second NewDataKey gave the same key (%v)", err)
	}
}

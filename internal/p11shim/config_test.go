//go:build cgo

package p11shim_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/p11shim"
	p11 "github.com/miekg/pkcs11"
)

// TestBuildCached builds twice into one directory: the second Build
// returns the module of the first without compiling again.
func TestBuildCached(t *testing.T) {
	dir := t.TempDir()
	mod := p11shim.Need(t, dir)
	fi, err := os.Stat(mod)
	if err != nil {
		t.Fatal(err)
	}
	again, err := p11shim.Build(context.Background(), dir)
	if err != nil || again != mod {
		t.Fatalf("second build: %q, %v; want %q", again, err, mod)
	}
	if fi2, err := os.Stat(again); err != nil || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("second build compiled again: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("build left %d entries in %s, want the module only", len(entries), dir)
	}
}

// TestConfig checks what profiles and configurations may hold: an
// unknown profile and out-of-range settings are refused, every profile
// writes a configuration the shim accepts, and a bad file makes
// C_Initialize fail rather than forward unchanged.
func TestConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  p11shim.Config
	}{
		{"iv-len=17", p11shim.Config{GCMIVLen: 17}},
		{"relative-module", p11shim.Config{Module: "libsofthsm2.so"}},
		{"negative-cap", p11shim.Config{MaxSessions: -1}},
		{"iv-mode=9", p11shim.Config{GCMIV: 9}},
		{"hide=17", p11shim.Config{HideMechanisms: make([]uint, 17)}},
	} {
		t.Run("bad="+tt.name, func(t *testing.T) {
			if err := tt.cfg.WriteFile(filepath.Join(t.TempDir(), "c")); err == nil {
				t.Fatal("written")
			}
		})
	}
	if _, err := p11shim.Profile("hsm9000").Config(); err == nil || !strings.Contains(err.Error(), "hsm9000") {
		t.Errorf("unknown profile: %v", err)
	}
	for _, p := range p11shim.Profiles() {
		t.Run("profile="+string(p), func(t *testing.T) {
			s := load(t, profile(t, p))
			if _, err := s.c.GetSlotList(true); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("bad-file", func(t *testing.T) {
		mod := p11shim.Need(t, shimDir)
		path := filepath.Join(t.TempDir(), "bad.conf")
		if err := os.WriteFile(path, []byte("module=/usr/lib/softhsm/libsofthsm2.so\ngcm_iv=sometimes\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(p11shim.EnvConfig, path)
		c := p11.New(mod)
		if c == nil {
			t.Fatalf("cannot load %s", mod)
		}
		defer c.Destroy()
		if err := c.Initialize(); ckr(t, err) != p11.CKR_GENERAL_ERROR {
			c.Finalize()
			t.Fatalf("initialise under a bad configuration: %v, want CKR_GENERAL_ERROR", err)
		}
	})
}

// childEnv marks the test binary run by TestConfigPerProcess.
const childEnv = "KMSFS_P11SHIM_TEST_CHILD"

// TestConfigPerProcess loads the shim as CloudHSM here and, while it is
// loaded, as SoftHSM in a second process: each follows its own
// configuration (read-only sessions refused here, opened there).
func TestConfigPerProcess(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		s := load(t, profile(t, p11shim.SoftHSM))
		if _, err := s.open(t, p11.CKF_SERIAL_SESSION); err != nil {
			t.Fatalf("child: read-only session: %v", err)
		}
		return
	}
	s := load(t, profile(t, p11shim.CloudHSM))
	if _, err := s.open(t, p11.CKF_SERIAL_SESSION); ckr(t, err) != p11.CKR_FUNCTION_FAILED {
		t.Fatalf("read-only session: %v, want CKR_FUNCTION_FAILED", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestConfigPerProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestConfigPerProcess") {
		t.Fatalf("child process: %v\n%s", err, out)
	}
	if _, err := s.open(t, p11.CKF_SERIAL_SESSION); ckr(t, err) != p11.CKR_FUNCTION_FAILED {
		t.Fatalf("read-only session after the child ran: %v, want CKR_FUNCTION_FAILED", err)
	}
}

//go:build !purego

package vaesgcm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The feature gate agrees with the kernel's view of the processor, so a
// broken gate cannot silently turn every other test here into a skip (and
// the codecs back to crypto/cipher).
func TestGateMatchesCPUInfo(t *testing.T) {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			break
		}
	}
	if len(flags) == 0 {
		t.Fatal("no flags line in /proc/cpuinfo")
	}
	want := true
	for _, f := range []string{"aes", "pclmulqdq", "avx2", "avx512f", "avx512bw", "vaes", "vpclmulqdq"} {
		want = want && flags[f]
	}
	if Supported() != want {
		t.Fatalf("Supported() = %v, but /proc/cpuinfo says the processor %s the features", Supported(), map[bool]string{true: "has", false: "lacks"}[want])
	}
}

// gateChild is set in the environment of the test binary that
// TestGateHonoursGODEBUG runs: the child only reports its gate.
const gateChild = "KMSFS_VAESGCM_GATE_CHILD"

// Each GODEBUG switch that takes away a feature the assembly needs turns
// the implementation off (cpu.avx512=off clears only x/sys/cpu's
// HasAVX512, not HasAVX512F, so the gate must ask for both), and without
// a switch the gate says what this process says. The gate is read at
// package initialisation, so each value runs this test binary anew.
func TestGateHonoursGODEBUG(t *testing.T) {
	if os.Getenv(gateChild) == "1" {
		fmt.Printf("supported=%v\n", Supported())
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		godebug string
		want    bool
	}{
		{"", Supported()},
		{"cpu.avx512=on", Supported()},
		{"cpu.avx512=off", false},
		{"cpu.avx512f=off", false},
		{"cpu.avx512bw=off", false},
		{"cpu.avx512vaes=off", false},
		{"cpu.avx512vpclmulqdq=off", false},
		{"cpu.avx=off", false},
		{"cpu.avx2=off", false},
		{"cpu.aes=off", false},
		{"cpu.pclmulqdq=off", false},
		{"cpu.all=off", false},
		{"madvdontneed=1,cpu.avx512=off", false},
	} {
		t.Run("GODEBUG="+c.godebug, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestGateHonoursGODEBUG$", "-test.count=1")
			cmd.Env = append(withoutGODEBUG(os.Environ()), gateChild+"=1", "GODEBUG="+c.godebug)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("test binary with GODEBUG=%s: %v: %s", c.godebug, err, out)
			}
			want := fmt.Sprintf("supported=%v\n", c.want)
			if !strings.Contains(string(out), want) {
				t.Fatalf("GODEBUG=%s: child printed %q, want %q", c.godebug, out, want)
			}
		})
	}
}

func withoutGODEBUG(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "GODEBUG=") {
			out = append(out, e)
		}
	}
	return out
}

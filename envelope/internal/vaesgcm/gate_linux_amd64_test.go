//go:build !purego

package vaesgcm

import (
	"os"
	"strings"
	"testing"
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

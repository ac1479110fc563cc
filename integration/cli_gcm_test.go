package integration_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// Under GODEBUG=fips140=only Go refuses AES-GCM with caller-chosen 16-byte
// nonces, which every block uses: `kmsfs mount` must stop at once with a
// message naming the mode, not panic or mount a volume whose every file
// then fails.
func TestCLIMountFIPS140Only(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.Env = append(v.Env, "GODEBUG=fips140=only")
	v.MountRefused(t, v.Cipher, v.Mnt,
		`(?m)^kmsfs: envelope: AES-GCM with 16-byte nonces is refused`, `GODEBUG=fips140=only`, `run without fips140=only`)
}

// The mount logs once which AES-GCM implementation it uses and why, and
// GODEBUG switches that rule vaesgcm out (FIPS 140 mode, a CPU feature
// turned off) leave a volume that reads and writes through crypto/cipher.
func TestCLIMountLogsGCM(t *testing.T) {
	for _, c := range []struct {
		godebug string
		want    []string
	}{
		{"fips140=on", []string{`gcm=crypto/cipher`, `FIPS 140 mode`}},
		{"cpu.avx512f=off", []string{`gcm=crypto/cipher`, `GODEBUG turned one off`}},
	} {
		t.Run("GODEBUG="+c.godebug, func(t *testing.T) {
			v := suite.StartVolume(t, fusetest.CLIOptions{Env: []string{"GODEBUG=" + c.godebug}})
			want := bytes.Repeat([]byte("sealed by crypto/cipher "), 400)
			mntWriteFile(t, v.Path("f"), want)
			got, err := os.ReadFile(v.Path("f"))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back: %v", err)
			}
			log := v.LogText()
			if n := strings.Count(log, "AES-GCM implementation"); n != 1 {
				t.Fatalf("%d lines name the AES-GCM implementation, want 1:\n%s", n, log)
			}
			for _, w := range c.want {
				if !strings.Contains(log, w) {
					t.Fatalf("log lacks %q:\n%s", w, log)
				}
			}
		})
	}
}

package envelope_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/internal/vaesgcm"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// oneBitOff is an AES-GCM whose output is wrong in one bit, as a corrupted
// round key or a faulty core would leave vaesgcm's.
type oneBitOff struct{ cipher.AEAD }

func (o oneBitOff) Seal(dst, nonce, plaintext, additionalData []byte) []byte {
	out := o.AEAD.Seal(dst, nonce, plaintext, additionalData)
	out[len(dst)] ^= 0x20
	return out
}

// newOneBitOff builds oneBitOff over vaesgcm where the processor has it
// (over crypto/cipher elsewhere: the fault, not the base, is the point).
func newOneBitOff(key []byte) (cipher.AEAD, bool) {
	if a, ok := vaesgcm.New(key); ok {
		return oneBitOff{a}, true
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, false
	}
	a, err := cipher.NewGCMWithNonceSize(blk, vaesgcm.NonceSize)
	return oneBitOff{a}, err == nil
}

// sealWith seals three and a half blocks with a codec under the choice in
// force, from a fixed random source, and opens them again.
func sealWith(t *testing.T) (sealed []byte, impl string) {
	t.Helper()
	v := newVolume(t, 4096, func(o *envelope.Options) { o.Rand = seeded(7) })
	c, err := v.NewCodec(dataKey(3), envelope.FileID{9})
	if err != nil {
		t.Fatal(err)
	}
	plain := fill(3*4096+100, 8)
	sealed = make([]byte, v.Layout().SealedLen(len(plain)))
	if err := c.Seal(sealed, plain, 0, 3); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(plain))
	if _, err := c.Open(back, sealed, 0, 3); err != nil || !bytes.Equal(back, plain) {
		t.Fatalf("open what the codec sealed: %v", err)
	}
	return sealed, envelope.CodecGCM(c)
}

// Codecs use vaesgcm only when nothing rules it out, and otherwise say
// why. A vaesgcm that gives other bytes than crypto/cipher (here one bit
// off, caught by the real self-test) is not used: codecs fall back to
// crypto/cipher, the reason and the self-test's error are reported, and
// the sealed bytes are those of a healthy implementation.
func TestGCMChoice(t *testing.T) {
	restore := envelope.SetWideGCM(false)
	reference, _ := sealWith(t)
	restore()
	mismatch := func() error { return vaesgcm.Compare(newOneBitOff) }
	for _, c := range []struct {
		name          string
		env           string
		fips          bool
		supported     bool
		selfTest      func() error
		wide          bool
		reason        string
		selfTestError bool
	}{
		{name: "all-clear", supported: true, selfTest: vaesgcm.SelfTest, wide: true},
		{name: "KMSFS_GCM=go", env: "go", supported: true, selfTest: vaesgcm.SelfTest, reason: "KMSFS_GCM=go"},
		{name: "fips140", fips: true, supported: true, selfTest: vaesgcm.SelfTest, reason: "FIPS 140 mode"},
		{name: "unsupported", selfTest: vaesgcm.SelfTest, reason: "no VAES"},
		{name: "self-test-mismatch", supported: true, selfTest: mismatch, reason: "self-test", selfTestError: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.wide && !vaesgcm.Supported() {
				t.Skip("this processor has no VAES/VPCLMULQDQ (TestGateMatchesCPUInfo checks the gate)")
			}
			defer envelope.SetGCMChoice(c.env, c.fips, c.supported, c.selfTest)()
			st, err := envelope.GCM()
			if err != nil {
				t.Fatal(err)
			}
			if st.Wide != c.wide || envelope.WideGCM() != c.wide {
				t.Fatalf("Wide = %v, WideGCM() = %v, want %v (reason %q)", st.Wide, envelope.WideGCM(), c.wide, st.Reason)
			}
			if c.wide != (st.Reason == "") || !strings.Contains(st.Reason, c.reason) {
				t.Fatalf("reason %q, want one containing %q", st.Reason, c.reason)
			}
			if c.selfTestError != errors.Is(st.SelfTest, vaesgcm.ErrSelfTest) {
				t.Fatalf("SelfTest = %v, want an ErrSelfTest: %v", st.SelfTest, c.selfTestError)
			}
			sealed, impl := sealWith(t)
			if strings.Contains(impl, "vaesgcm") != c.wide {
				t.Fatalf("codec seals with %s", impl)
			}
			if !bytes.Equal(sealed, reference) {
				t.Fatal("sealed bytes differ from crypto/cipher's")
			}
		})
	}
}

// fipsChild marks the test binary that TestFIPS140Modes runs under a
// GODEBUG fips140 setting.
const fipsChild = "KMSFS_ENVELOPE_FIPS_CHILD"

// FIPS 140 mode is fixed at process start, so each mode runs this test
// binary anew. fips140=on: codecs use crypto/cipher, and files are
// written and read. fips140=only: Go refuses GCM with caller-chosen
// nonces, so every entry point returns an error wrapping ErrNoGCM that
// names the mode; nothing panics and nothing falls back to vaesgcm.
func TestFIPS140Modes(t *testing.T) {
	if mode := os.Getenv(fipsChild); mode != "" {
		fipsChildChecks(t, mode)
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"on", "only"} {
		t.Run("fips140="+mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestFIPS140Modes$", "-test.count=1", "-test.v")
			var env []string
			for _, e := range os.Environ() {
				if !strings.HasPrefix(e, "GODEBUG=") && !strings.HasPrefix(e, "KMSFS_GCM=") {
					env = append(env, e)
				}
			}
			cmd.Env = append(env, "GODEBUG=fips140="+mode, fipsChild+"="+mode)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "checked fips140="+mode+"\n") || !strings.Contains(string(out), "--- PASS: TestFIPS140Modes") {
				t.Fatalf("test binary under GODEBUG=fips140=%s: %v\n%s", mode, err, out)
			}
		})
	}
}

func fipsChildChecks(t *testing.T, mode string) {
	v := newVolume(t, 4096)
	dk := dataKey(5)
	st, err := envelope.GCM()
	switch mode {
	case "on":
		if err != nil || st.Wide || !strings.Contains(st.Reason, "FIPS") {
			t.Fatalf("GCM() = %+v, %v; want crypto/cipher for FIPS 140 mode", st, err)
		}
		f, b := newFile(t, v, dk)
		plain := fill(5000, 1)
		if _, err := f.WriteAt(plain, 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		g := reopen(t, v, b)
		back := make([]byte, len(plain))
		if _, err := g.ReadAt(back, 0); err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("read back under fips140=on: %v", err)
		}
	case "only":
		if !errors.Is(err, envelope.ErrNoGCM) || !strings.Contains(err.Error(), "fips140=only") {
			t.Fatalf("GCM() = %+v, %v; want ErrNoGCM naming fips140=only", st, err)
		}
		if _, err := v.NewCodec(dk, envelope.FileID{1}); !errors.Is(err, envelope.ErrNoGCM) {
			t.Fatalf("NewCodec: %v, want ErrNoGCM", err)
		}
		if _, err := v.Create(&memfile.File{}, dk, []stanza.Stanza{clearStanza(dk)}); !errors.Is(err, envelope.ErrNoGCM) {
			t.Fatalf("Create: %v, want ErrNoGCM", err)
		}
		for _, vec := range loadVectors(t) {
			if _, err := vec.vol.Open(context.Background(), memfile.New(vec.cipher), &clearKeys{}); !errors.Is(err, envelope.ErrNoGCM) {
				t.Fatalf("open golden vector %s: %v, want ErrNoGCM", vec.Name, err)
			}
		}
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	fmt.Println("checked fips140=" + mode)
}

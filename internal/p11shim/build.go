// Package p11shim builds and configures a PKCS#11 module for tests that
// forwards every call to SoftHSM2 while behaving like a named HSM where
// real HSMs differ from SoftHSM: read-only sessions refused, AES-GCM IVs
// generated on the token, one CK_GCM_PARAMS layout, RFC 5649 key wrap
// under another mechanism number, secret keys sensitive by policy, a
// session cap, sessions dropped as in a failover. README.md lists the
// profiles and the vendor documentation each behaviour follows.
//
// The shim is C (csrc/shim.c): a Go c-shared library cannot safely be
// loaded into a Go program. Build compiles it with the system C compiler;
// a test then writes a Config, points EnvConfig at it and loads the
// module like any other:
//
//	mod := p11shim.Need(t, dir)
//	cfg, _ := p11shim.CloudHSM.Config()
//	cfg.WriteFile(path)
//	t.Setenv(p11shim.EnvConfig, path)
//	ctx := pkcs11.New(mod)
package p11shim

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
)

//go:embed csrc/shim.c csrc/pkcs11.h csrc/pkcs11t.h csrc/pkcs11f.h
var sources embed.FS

// ErrUnavailable is wrapped by Build when the C compiler is missing, and
// by Need when SoftHSM2 is.
var ErrUnavailable = errors.New("p11shim: unavailable")

// Build compiles the shim into dir and returns the module's path. The
// file's name carries a hash of the sources, so a later Build into the
// same dir returns the module already there without compiling again: a
// test binary builds once, from TestMain, into a directory of its own.
// The C compiler is $CC, else cc; the build treats warnings as errors.
func Build(ctx context.Context, dir string) (string, error) {
	h := sha256.New()
	files, err := fs.Glob(sources, "csrc/*")
	if err != nil {
		return "", fmt.Errorf("p11shim: %w", err)
	}
	for _, f := range files {
		b, err := sources.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("p11shim: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	mod := filepath.Join(dir, "kmsfs-p11shim-"+hex.EncodeToString(h.Sum(nil))[:16]+".so")
	if _, err := os.Stat(mod); err == nil {
		return mod, nil
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		return "", fmt.Errorf("%w: C compiler: %v", ErrUnavailable, err)
	}
	src, err := os.MkdirTemp(dir, "p11shim-src-")
	if err != nil {
		return "", fmt.Errorf("p11shim: %w", err)
	}
	defer os.RemoveAll(src)
	for _, f := range files {
		b, _ := sources.ReadFile(f)
		if err := os.WriteFile(filepath.Join(src, filepath.Base(f)), b, 0o600); err != nil {
			return "", fmt.Errorf("p11shim: %w", err)
		}
	}
	tmp := filepath.Join(src, "shim.so")
	cmd := exec.CommandContext(ctx, cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
		"-fvisibility=hidden", "-o", tmp, filepath.Join(src, "shim.c"), "-ldl", "-lpthread")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("p11shim: %s: %w\n%s", cc, err, out)
	}
	// Renamed into place whole, so a module that exists is complete.
	if err := os.Rename(tmp, mod); err != nil {
		return "", fmt.Errorf("p11shim: %w", err)
	}
	return mod, nil
}

// Need builds the shim into dir (see Build) or stops the test: under
// CI=true it fails, otherwise it is skipped when the compiler or SoftHSM
// ($KMSFS_PKCS11_MODULE, else DefaultModule) is missing. Any other build
// error fails the test.
func Need(t testing.TB, dir string) string {
	t.Helper()
	var mod string
	_, err := os.Stat(hsmtest.ModulePath())
	if err != nil {
		err = fmt.Errorf("%w: SoftHSM2 module: %v (install the softhsm2 package or set KMSFS_PKCS11_MODULE)", ErrUnavailable, err)
	} else if mod, err = Build(context.Background(), dir); err == nil {
		return mod
	}
	if errors.Is(err, ErrUnavailable) && os.Getenv("CI") != "true" {
		t.Skipf("no PKCS#11 shim (CI=true would fail here): %v", err)
	}
	t.Fatal(err)
	return ""
}

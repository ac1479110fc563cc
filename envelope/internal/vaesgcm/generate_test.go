package vaesgcm_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The committed vaesgcm_amd64.s is exactly what the generator in _asm
// writes: a hand edit of the assembly, or a change to the generator whose
// output was not regenerated, fails here. The generator imports only the
// standard library, so running it needs no module download and works
// offline.
func TestAssemblyIsGenerated(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no go command to run the generator: %v", err)
		}
		t.Skipf("no go command to run the generator: %v", err)
	}
	committed, err := os.ReadFile("vaesgcm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "vaesgcm_amd64.s")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "run", ".", "-out", out)
	cmd.Dir = "_asm"
	// The generator is its own module: no workspace, and no flags meant
	// for the main module (a -mod=vendor would find no vendor directory).
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run in _asm: %v\n%s", err, msg)
	}
	generated, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, generated) {
		line := 1 + bytes.Count(committed[:commonPrefix(committed, generated)], []byte("\n"))
		t.Fatalf("vaesgcm_amd64.s differs from the generator's output from line %d: run `go generate ./envelope/internal/vaesgcm/` (or `make generate`) and commit the result", line)
	}
	if !bytes.HasPrefix(generated, []byte("// Code generated ")) || !bytes.Contains(generated[:bytes.IndexByte(generated, '\n')], []byte("DO NOT EDIT.")) {
		t.Fatal("vaesgcm_amd64.s does not open with a \"Code generated ... DO NOT EDIT.\" line")
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

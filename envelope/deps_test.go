package envelope_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestFormatOnly keeps envelope the format: it builds for systems other
// than Linux, and depends on no key source and no system-call package
// (the journal and the OS-specific backings live above it).
func TestFormatOnly(t *testing.T) {
	// go test puts its own toolchain's bin first on PATH.
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command, to list envelope's dependencies: %v", err)
	}
	forbidden := []string{"golang.org/x/sys/unix", "github.com/kmsfs/kmsfs/keysource", "github.com/hanwen/go-fuse"}
	for _, target := range []string{"linux/amd64", "linux/arm64", "darwin/arm64", "windows/amd64"} {
		t.Run("target="+target, func(t *testing.T) {
			goos, goarch, _ := strings.Cut(target, "/")
			env := append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch)
			list := exec.Command(gotool, "list", "-deps", "./...")
			list.Env = env
			out, err := list.Output()
			if err != nil {
				t.Fatalf("go list -deps ./...: %v", err)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range forbidden {
					if dep == f || strings.HasPrefix(dep, f+"/") {
						t.Errorf("envelope depends on %s", dep)
					}
				}
			}
			build := exec.Command(gotool, "build", "./...")
			build.Env = env
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build ./... for %s: %v\n%s", target, err, out)
			}
		})
	}
}

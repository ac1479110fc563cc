package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// opsPosixNotApplicable lists the posixtest cases kmsfs does not run, and
// why (as fs's TestPosix does).
var opsPosixNotApplicable = map[string]string{
	// kmsfs leaves POSIX record locks to the kernel, which keeps them per
	// process; this case expects the go-fuse loopback's per-descriptor
	// locks. TestLocks checks flock and OFD locks instead.
	"FcntlFlockLocksFile": "POSIX locks are per process (kernel-local), not per descriptor",
}

// TestPosixVolume runs go-fuse's posixtest conformance cases over a real
// volume (volume.Init and volume.Open: a local key, the data-key manager,
// the write journal and, with encrypted names, the volume's name key)
// served in this process, with names in the clear and encrypted: the
// results must be the same. Each case runs in a directory of its own,
// whose name is long with encrypted names, so that every entry the cases
// make sits under a long name's side file.
func TestPosixVolume(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			m := fusetest.MountVolumeWith(t, 4096, kfs.Options{Xattr: true}, nm.encrypted)
			for name, fn := range posixtest.All {
				t.Run(name, func(t *testing.T) {
					if why, ok := opsPosixNotApplicable[name]; ok {
						t.Skip(why)
					}
					dir := filepath.Join(m.Dir, name)
					if nm.encrypted {
						dir = filepath.Join(m.Dir, sxLongName(fmt.Sprintf("posix-%s", name), len(name)))
					}
					if err := os.Mkdir(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					fn(t, dir)
				})
			}
		})
	}
}

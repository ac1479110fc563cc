package integration_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// mntPosixNotRun lists the go-fuse posixtest cases this suite does not
// run against kmsfs, and why (fs/fs_test.go skips the first too).
var mntPosixNotRun = map[string]string{
	// POSIX record locks are left to the kernel, which keeps them per
	// process as on a local filesystem; the case expects go-fuse
	// loopback's per-descriptor locks. TestOpsLocks covers locks.
	"FcntlFlockLocksFile": "POSIX locks are per process (kernel-local), not per descriptor",
	// These three skip themselves on kmsfs; each is covered here instead,
	// so that nothing in this package skips.
	"RenameOpenDir": "fstat of an open dir replaced by rename: TestOpsRename/open-dir-replaced",
	"Tmpfile":       "O_TMPFILE is not supported (EOPNOTSUPP): TestOpsCreate/tmpfile",
	"XAttrLarge":    "values over the backing filesystem's limit (ext4: one block): TestOpsXattr",
}

// TestOpsPosixtest runs go-fuse's posixtest conformance cases against a
// mount made by the CLI with a local key.
func TestOpsPosixtest(t *testing.T) {
	v := mntOps(t, "-o", "default_permissions", "--xattr")
	for name, fn := range posixtest.All {
		if _, skip := mntPosixNotRun[name]; skip {
			continue
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(v.Mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			fn(t, dir)
		})
	}
}

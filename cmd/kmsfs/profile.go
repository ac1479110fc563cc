package main

import (
	"os"
	"runtime/pprof"

	"github.com/sirupsen/logrus"
)

// startProfile writes a CPU profile of the mounted daemon to the file
// KMSFS_CPUPROFILE names, if set, until the returned function is called
// (at unmount); without it, the function does nothing. It is for performance work (docs/PERFORMANCE.md); the
// profile holds function names and sample counts, no file data or keys.
func startProfile(log *logrus.Entry) func() {
	path := os.Getenv("KMSFS_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		log.WithError(err).Warn("KMSFS_CPUPROFILE: cannot create the profile")
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		log.WithError(err).Warn("KMSFS_CPUPROFILE: cannot start profiling")
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

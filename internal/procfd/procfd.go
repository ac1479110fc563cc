// Package procfd lists the calling process's open descriptors, for tests
// that check a filesystem let go of its backing directory.
package procfd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Desc is one open descriptor and what it refers to.
type Desc struct {
	FD     string
	Target string
}

func (d Desc) String() string { return d.FD + " -> " + d.Target }

// Under returns this process's descriptors of dir and of anything in it;
// it fails tb if /proc cannot be read.
func Under(tb testing.TB, dir string) []Desc {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	var out []Desc
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the descriptor ReadDir itself used, now closed
		}
		if target == dir || strings.HasPrefix(target, dir+"/") {
			out = append(out, Desc{FD: e.Name(), Target: target})
		}
	}
	return out
}

// Package mountinfo parses /proc/self/mountinfo (proc_pid_mountinfo(5)):
// the mount points of this mount namespace and their filesystem types.
package mountinfo

import (
	"os"
	"strconv"
	"strings"
)

// Mount is one line of a mountinfo file:
//
//	ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
type Mount struct {
	Point  string   // the mount point (field 5), unescaped
	FSType string   // the field after the "-" separator, "" if there is none
	Source string   // the field after FSType (for kmsfs the cipher dir), unescaped; "" if there is none
	Fields []string // every field of the line, as written (still escaped)
}

// Parse returns the mounts of a mountinfo file's text in order; lines of
// fewer than five fields are skipped.
func Parse(text string) []Mount {
	var ms []Mount
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		m := Mount{Point: Unescape(f[4]), Fields: f}
		for i, s := range f {
			if s == "-" && i+1 < len(f) {
				m.FSType = f[i+1]
				if i+2 < len(f) {
					m.Source = Unescape(f[i+2])
				}
				break
			}
		}
		ms = append(ms, m)
	}
	return ms
}

// Read parses /proc/self/mountinfo.
func Read() ([]Mount, error) {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return Parse(string(raw)), nil
}

// Lookup returns the first mount at path in /proc/self/mountinfo and
// whether there is one.
func Lookup(path string) (Mount, bool, error) {
	ms, err := Read()
	if err != nil {
		return Mount{}, false, err
	}
	for _, m := range ms {
		if m.Point == path {
			return m, true, nil
		}
	}
	return Mount{}, false, nil
}

// Unescape undoes mountinfo's octal escapes (\040 for a space, \011, \012,
// \134 for a backslash); other text, and a backslash not followed by three
// octal digits, is kept as it is.
func Unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

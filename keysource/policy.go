package keysource

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Default data-key reuse policy ("batched"). One KMS data key serves at
// most DefaultMaxFiles new files and for at most DefaultMaxAge after its
// first file. At 1,000 creates a second that is about 4 GenerateDataKey
// calls a second, far below a shared KMS quota, while a data key that leaks
// exposes at most 256 files, all created within ten minutes. Every file
// still gets its own content key (HKDF over the file ID), so reuse weakens
// no per-file cryptographic bound.
const (
	DefaultMaxFiles = 256
	DefaultMaxAge   = 10 * time.Minute
)

// Policy is the data-key reuse policy of a Manager: how many new files one
// data key may serve and for how long after its first file. The zero value
// means the default batched policy; MaxFiles 1 is the per-file policy.
//
// Policy marshals to and from the text of the --data-key-policy flag (see
// ParsePolicy), so it can sit in kmsfs.conf as a JSON string.
type Policy struct {
	// MaxFiles is the number of new files one data key serves; 0 means
	// DefaultMaxFiles, 1 means one data key per file.
	MaxFiles int
	// MaxAge bounds how long a data key serves new files, counted from its
	// first file; 0 means DefaultMaxAge. It does not matter when MaxFiles
	// is 1.
	MaxAge time.Duration
}

// PerFile is the policy of one data key per file: destroying a file's
// header destroys the only wrapped copy of its data key (crypto-shredding
// per file), at one KMS call per create.
func PerFile() Policy { return Policy{MaxFiles: 1} }

// ParsePolicy parses the value of the --data-key-policy flag:
//
//	per-file                            one data key per file
//	batched                             DefaultMaxFiles files, DefaultMaxAge
//	batched:max-files=N                 N files (N >= 1), DefaultMaxAge
//	batched:max-age=D                   DefaultMaxFiles files, D (a Go duration > 0: 90s, 5m, 1h)
//	batched:max-files=N,max-age=D       both, in any order
//
// Options not given keep their defaults; an option given twice, an unknown
// option or a bad value is an error wrapping ErrInvalid.
func ParsePolicy(s string) (Policy, error) {
	mode, opts, hasOpts := strings.Cut(s, ":")
	switch {
	case mode == "per-file" && !hasOpts:
		return PerFile(), nil
	case mode != "batched":
		return Policy{}, fmt.Errorf("keysource: data-key policy %q: want per-file, batched or batched:max-files=N,max-age=D: %w", s, ErrInvalid)
	}
	p := Policy{MaxFiles: DefaultMaxFiles, MaxAge: DefaultMaxAge}
	if !hasOpts {
		return p, nil
	}
	var seen [2]bool
	for _, kv := range strings.Split(opts, ",") {
		k, v, _ := strings.Cut(kv, "=")
		bad := func(want string) (Policy, error) {
			return Policy{}, fmt.Errorf("keysource: data-key policy %q: %s=%q: want %s: %w", s, k, v, want, ErrInvalid)
		}
		switch k {
		case "max-files":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || seen[0] {
				return bad("one whole number >= 1")
			}
			p.MaxFiles, seen[0] = n, true
		case "max-age":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || seen[1] {
				return bad("one duration > 0 such as 90s, 5m or 1h")
			}
			p.MaxAge, seen[1] = d, true
		default:
			return Policy{}, fmt.Errorf("keysource: data-key policy %q: unknown option %q (want max-files or max-age): %w", s, k, ErrInvalid)
		}
	}
	return p, nil
}

// withDefaults returns p with zero fields set to their defaults.
func (p Policy) withDefaults() Policy {
	if p.MaxFiles == 0 {
		p.MaxFiles = DefaultMaxFiles
	}
	if p.MaxAge == 0 {
		p.MaxAge = DefaultMaxAge
	}
	return p
}

// String returns p in the syntax ParsePolicy takes: "per-file", "batched"
// for the defaults, else "batched:max-files=N,max-age=D".
func (p Policy) String() string {
	p = p.withDefaults()
	switch {
	case p.MaxFiles == 1:
		return "per-file"
	case p.MaxFiles == DefaultMaxFiles && p.MaxAge == DefaultMaxAge:
		return "batched"
	}
	return fmt.Sprintf("batched:max-files=%d,max-age=%s", p.MaxFiles, p.MaxAge)
}

// MarshalText returns p.String(), for kmsfs.conf.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText sets p from text in the syntax ParsePolicy takes.
func (p *Policy) UnmarshalText(text []byte) error {
	q, err := ParsePolicy(string(text))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

func (p Policy) check() error {
	if p.MaxFiles < 0 || p.MaxAge < 0 {
		return fmt.Errorf("keysource: data-key policy max-files=%d, max-age=%s: want both >= 0: %w", p.MaxFiles, p.MaxAge, ErrInvalid)
	}
	return nil
}

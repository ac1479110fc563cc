package local

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/scrypt"

	"github.com/kmsfs/kmsfs/keysource"
)

// KDFScrypt is the only key-derivation algorithm of format version 1.
const KDFScrypt = "scrypt"

// Default scrypt parameters for new volumes: N = 2^17, r = 8, p = 1, the
// cost OWASP's password storage guidance names for scrypt, uses 128 MiB,
// once per mount.
const (
	DefaultScryptLogN = 17
	DefaultScryptR    = 8
	DefaultScryptP    = 1
)

// The floor below which loaded parameters are refused: whoever can edit
// kmsfs.conf could otherwise lower the cost and make the passphrase of
// every later mount cheap to guess from the stanzas it wraps. Volumes of
// earlier releases were made with N = 2^16, r = 8, so that is the floor.
const (
	MinScryptLogN = 16
	MinScryptR    = 8
)

const (
	saltSize        = 16
	maxSaltSize     = 64
	maxScryptMemory = 1 << 30 // 128·r·N bytes; refuse more from a damaged conf
	maxPassphrase   = 64 << 10
)

// KDFParams are the parameters that turn a passphrase into the local
// master key. They are not secret: kmsfs.conf stores them as JSON, and the
// same passphrase with the same parameters gives the same key.
type KDFParams struct {
	Alg  string `json:"alg"`   // KDFScrypt
	Salt []byte `json:"salt"`  // random, 16 to 64 bytes
	LogN uint8  `json:"log_n"` // scrypt cost N = 2^LogN
	R    int    `json:"r"`     // scrypt block size
	P    int    `json:"p"`     // scrypt parallelism
}

// NewKDFParams returns the default parameters with a fresh salt from r
// (nil means crypto/rand.Reader), for a new volume.
func NewKDFParams(r io.Reader) (KDFParams, error) {
	if r == nil {
		r = rand.Reader
	}
	p := KDFParams{Alg: KDFScrypt, Salt: make([]byte, saltSize), LogN: DefaultScryptLogN, R: DefaultScryptR, P: DefaultScryptP}
	if _, err := io.ReadFull(r, p.Salt); err != nil {
		return KDFParams{}, fmt.Errorf("local: salt: %w", err)
	}
	return p, nil
}

// Check reports whether p is usable: a known algorithm, a salt of 16 to 64
// bytes, a cost of at least N = 2^MinScryptLogN and r = MinScryptR, and
// at most 1 GiB of memory.
func (p KDFParams) Check() error { return p.check(false) }

// BelowDefault reports whether p costs less than the parameters new volumes
// get, for the CLI to warn that the passphrase KDF is weaker than current
// guidance (p itself passes Check).
func (p KDFParams) BelowDefault() bool {
	return p.Alg == KDFScrypt && (p.LogN < DefaultScryptLogN || p.R < DefaultScryptR)
}

func (p KDFParams) check(allowWeak bool) error {
	switch {
	case p.Alg == "":
		return fmt.Errorf("local: passphrase key needs its KDF parameters from kmsfs.conf (new volumes: NewKDFParams): %w", keysource.ErrInvalid)
	case p.Alg != KDFScrypt:
		return fmt.Errorf("local: KDF %q: want %q: %w", p.Alg, KDFScrypt, keysource.ErrInvalid)
	case len(p.Salt) < saltSize || len(p.Salt) > maxSaltSize:
		return fmt.Errorf("local: KDF salt of %d bytes, want %d to %d: %w", len(p.Salt), saltSize, maxSaltSize, keysource.ErrInvalid)
	case p.LogN < 1 || p.LogN > 30 || p.R < 1 || p.R > 1<<16 || p.P < 1 || p.P > 16 ||
		int64(128)*int64(p.R)<<p.LogN > maxScryptMemory:
		return fmt.Errorf("local: scrypt log_n=%d r=%d p=%d: want 1 <= p <= 16 and at most %d MiB: %w",
			p.LogN, p.R, p.P, maxScryptMemory>>20, keysource.ErrInvalid)
	case !allowWeak && (p.LogN < MinScryptLogN || p.R < MinScryptR):
		return fmt.Errorf("local: scrypt log_n=%d r=%d in kmsfs.conf is below the minimum log_n=%d r=%d: "+
			"weakened KDF parameters make the passphrase cheap to guess, so they are refused (was kmsfs.conf edited?): %w",
			p.LogN, p.R, MinScryptLogN, MinScryptR, keysource.ErrInvalid)
	}
	return nil
}

// String describes p without the salt.
func (p KDFParams) String() string {
	return fmt.Sprintf("%s N=2^%d r=%d p=%d", p.Alg, p.LogN, p.R, p.P)
}

// openPassphrase returns the Source for the passphrase form. The passphrase
// comes from o.PassphraseFile if set, else from KMSFS_PASSPHRASE, else
// from o.Prompt; never from a command-line argument. It is stretched with
// o.KDF (deliberately slow at the defaults, as guessing must be) and
// cleared where the Source can clear it; the derived master key lives in a
// cell of o.Mem only until the wrapping key is derived from it.
func openPassphrase(o Options) (*Source, error) {
	if err := o.KDF.check(o.AllowWeakKDF); err != nil {
		return nil, err
	}
	pass, from, err := o.passphrase()
	if err != nil {
		return nil, err
	}
	derived, err := scrypt.Key(pass, o.KDF.Salt, 1<<o.KDF.LogN, o.KDF.R, o.KDF.P, masterSize)
	clear(pass)
	if err != nil {
		return nil, fmt.Errorf("local: %v: %w", o.KDF, err)
	}
	master := o.Mem.Clone(derived)
	clear(derived)
	s, err := newSource(master, prefixPassphrase, o)
	o.Mem.Free(master)
	if err != nil {
		return nil, err
	}
	s.detail = fmt.Sprintf("passphrase from %s, %v", from, o.KDF)
	return s, nil
}

// passphrase returns the passphrase, which the caller clears, and where it
// came from.
func (o Options) passphrase() ([]byte, string, error) {
	if o.PassphraseFile != "" {
		p, err := readPassphraseFile(o.PassphraseFile)
		return p, "file " + o.PassphraseFile, err
	}
	lookup := o.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if v, ok := lookup(PassphraseEnv); ok {
		if v == "" {
			return nil, "", fmt.Errorf("local: %s is set but empty: %w", PassphraseEnv, keysource.ErrInvalid)
		}
		return []byte(v), PassphraseEnv, nil
	}
	if o.Prompt != nil {
		p, err := o.Prompt()
		if err != nil {
			clear(p)
			return nil, "", fmt.Errorf("local: passphrase prompt: %w", err)
		}
		if len(p) == 0 {
			return nil, "", fmt.Errorf("local: empty passphrase: %w", keysource.ErrInvalid)
		}
		return p, "prompt", nil
	}
	return nil, "", fmt.Errorf("local: no passphrase: set %s, give a passphrase file, or run on a terminal: %w",
		PassphraseEnv, keysource.ErrInvalid)
}

// readPassphraseFile reads a passphrase file, refusing one that every user
// may write, and drops one trailing "\n" or "\r\n".
func readPassphraseFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("local: passphrase file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("local: passphrase file: %w", err)
	}
	if fi.Mode().IsRegular() && fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("local: passphrase file %s is writable by every user (mode %04o); make it private with chmod 600: %w",
			path, fi.Mode().Perm(), keysource.ErrInvalid)
	}
	p, err := io.ReadAll(io.LimitReader(f, maxPassphrase+1))
	if err != nil {
		clear(p)
		return nil, fmt.Errorf("local: passphrase file %s: %w", path, err)
	}
	if len(p) > maxPassphrase {
		clear(p)
		return nil, fmt.Errorf("local: passphrase file %s is over %d bytes: %w", path, maxPassphrase, keysource.ErrInvalid)
	}
	p = bytes.TrimSuffix(p, []byte("\n"))
	p = bytes.TrimSuffix(p, []byte("\r"))
	if len(p) == 0 {
		clear(p[:cap(p)])
		return nil, fmt.Errorf("local: passphrase file %s is empty: %w", path, keysource.ErrInvalid)
	}
	return p, nil
}

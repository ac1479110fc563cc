package volume

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// keySet is the opened key sources of a volume, primary first.
type keySet struct {
	// list holds a source per key of the volume, nil for a retiring key
	// that did not open.
	list     []keysource.KeySource
	warnings []Warning
	closers  []io.Closer
	loader   *pkcs11.Loader
}

// Close closes the sources that hold resources.
func (s *keySet) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

// open opens one key source for volume vid, with what kmsfs.conf records
// of it in k. k.KDF is nil for a new passphrase: fresh parameters are
// made and returned (Init).
func (s *keySet) open(ctx context.Context, spec keysource.Spec, vid envelope.VolumeID, k volconf.Key, o Options, confirm bool) (keysource.KeySource, *local.KDFParams, error) {
	kdf := k.KDF
	sec := o.Secrets
	switch spec.Type {
	case "local":
		lo := local.Options{VolumeID: vid, PassphraseFile: sec.PassphraseFile, LookupEnv: sec.LookupEnv, Mem: o.Mem}
		if spec.Value == "passphrase" {
			if kdf == nil {
				p, err := local.NewKDFParams(nil)
				if err != nil {
					return nil, nil, err
				}
				kdf = &p
			}
			lo.KDF = *kdf
			if pp := sec.Passphrase; pp != nil {
				lo.Prompt = func() ([]byte, error) { return append([]byte(nil), pp...), nil }
			} else if sec.Prompt != nil {
				lo.Prompt = func() ([]byte, error) { return sec.Prompt(confirm) }
			}
		} else {
			kdf = nil
		}
		src, err := local.Open(ctx, spec, lo)
		if err != nil {
			return nil, nil, err
		}
		s.closers = append(s.closers, src)
		return src, kdf, nil
	case "pkcs11":
		if s.loader == nil {
			s.loader = pkcs11.NewLoader()
		}
		src, err := pkcs11.Open(ctx, spec, pkcs11.Options{VolumeID: vid, Loader: s.loader, LookupEnv: sec.LookupEnv})
		if err != nil {
			return nil, nil, err
		}
		s.closers = append(s.closers, src)
		return src, nil, nil
	case "awskms":
		src, err := awskms.Open(ctx, spec, awskms.Options{VolumeID: vid, PublicKeyFile: o.PublicKeyFile, PublicKeySHA256: k.PublicKeySHA256})
		return src, nil, err
	}
	return nil, nil, fmt.Errorf("volume: unknown key type %q", spec.Type)
}

// hostSpec returns the spec that opens an approved key: the spec of
// kmsfs.conf with the host's settings put back (a PKCS#11 module and PIN
// source, a key file's path), and for AWS the pinned key ARN instead of an
// alias, so a moved alias never changes the key.
func hostSpec(k volconf.Key, h volconf.HostKey) (keysource.Spec, error) {
	spec, err := keysource.ParseSpec(k.Spec)
	if err != nil {
		return spec, err
	}
	switch {
	case spec.Type == "awskms":
		spec.Value = k.KeyID
	case spec.Type == "pkcs11":
		u, err := pkcs11.ParseURI(spec.Value)
		if err != nil {
			return spec, err
		}
		u.ModulePath, u.PINSource = h.PKCS11Module, h.PKCS11PINSource
		u.Wrap, u.MaxSessions = h.PKCS11Wrap, h.PKCS11MaxSessions
		spec.Value = u.String()
	case volconf.IsKeyFile(k.Spec):
		spec.Value = h.KeyFile
	}
	return spec, nil
}

// openApproved opens key k of an approved volume with the host settings
// h and checks that it is the approved key.
func (s *keySet) openApproved(ctx context.Context, k volconf.Key, h volconf.HostKey, vid envelope.VolumeID, o Options) (keysource.KeySource, error) {
	spec, err := hostSpec(k, h)
	if err != nil {
		return nil, err
	}
	src, _, err := s.open(ctx, spec, vid, k, o, false)
	if err != nil {
		return nil, err
	}
	if !sameKey(src.KeyID(), k.KeyID) {
		return nil, fmt.Errorf("not the key this volume was approved with: it has key ID %s, the approved key ID is %s", src.KeyID(), k.KeyID)
	}
	return src, nil
}

// sameKey reports whether key IDs a and b name the same key: equal, or
// for AWS replicas of one multi-Region key, which open each other's
// stanzas.
func sameKey(a, b string) bool { return a == b || awskms.SameKey(a, b) }

// openAnchor opens every key source of an approved volume, primary first.
// opened holds sources already opened for some keys (checkAliases): they
// are used as they are.
func openAnchor(ctx context.Context, a *volconf.Anchor, o Options, opened []keysource.KeySource) (*keySet, error) {
	vid, err := a.Conf.ID()
	if err != nil {
		return nil, err
	}
	s := &keySet{}
	for i, k := range a.Conf.Keys {
		src := opened[i]
		if src == nil {
			src, err = s.openApproved(ctx, k, a.Host[i], vid, o)
		}
		if err != nil && k.Retiring {
			// A key a rewrap is leaving may already be disabled or gone:
			// the files rewrapped open without it, the others fail alone.
			s.warnings = append(s.warnings, Warning{Fields: map[string]any{"key": k.KeyID, "error": err.Error()},
				Msg: fmt.Sprintf("retiring key %s does not open: files not yet rewrapped away from it cannot be read; finish with `kmsfs rewrap`", k.KeyID)})
			s.list = append(s.list, nil)
			continue
		}
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("key %d (%s): %w", i+1, k.KeyID, err)
		}
		s.list = append(s.list, src)
	}
	return s, nil
}

// managerOptions returns the Manager options of the key set of a volume
// configured by c: the primary key, the other active keys as escrow, the
// retiring keys that opened as unwrap-only.
func (s *keySet) managerOptions(c *volconf.Conf) keysource.Options {
	n := c.ActiveCount()
	var retiring []keysource.KeySource
	for _, src := range s.list[n:] {
		if src != nil {
			retiring = append(retiring, src)
		}
	}
	return keysource.Options{Primary: s.list[0], Escrow: s.list[1:n], UnwrapOnly: retiring}
}

// CheckKeys opens every key the anchor a approved with this host's
// settings and checks it is the key kmsfs.conf names; with roundTrip,
// also that it wraps and unwraps a test key.
func CheckKeys(ctx context.Context, a *volconf.Anchor, o Options, roundTrip bool) error {
	vid, err := a.Conf.ID()
	if err != nil {
		return err
	}
	s := &keySet{}
	defer s.Close()
	for i, k := range a.Conf.Keys {
		src, err := s.openApproved(ctx, k, a.Host[i], vid, o)
		if err != nil {
			return fmt.Errorf("key %d (%s): %w", i+1, k.KeyID, err)
		}
		if !roundTrip {
			continue
		}
		if err := checkRoundTrip(ctx, src, false, i == 0); err != nil {
			return fmt.Errorf("key %d (%s): %w (a key that only decrypts or only encrypts here: --read-only)", i+1, k.KeyID, err)
		}
	}
	return nil
}

// AliasTargets returns, for each key of c given as an AWS alias, the key
// ARN the alias points at now ("" for other keys). An alias that does not
// resolve is left "" and reported as a Warning.
func AliasTargets(ctx context.Context, c *volconf.Conf) ([]string, []Warning) {
	srcs, ws := aliasSources(ctx, c)
	targets := make([]string, len(c.Keys))
	for i, src := range srcs {
		if src != nil {
			targets[i] = src.KeyID()
		}
	}
	return targets, ws
}

// aliasSources opens, for each key of c given as an AWS alias, the key
// the alias points at now (nil for other keys). An alias that does not
// resolve is left nil and reported as a Warning.
func aliasSources(ctx context.Context, c *volconf.Conf) ([]keysource.KeySource, []Warning) {
	vid, _ := c.ID()
	srcs := make([]keysource.KeySource, len(c.Keys))
	var ws []Warning
	for i, k := range c.Keys {
		alias := volconf.AWSAlias(k.Spec)
		if alias == "" {
			continue
		}
		cur, err := awskms.Open(ctx, keysource.Spec{Type: awskms.Type, Value: alias}, awskms.Options{VolumeID: vid})
		if err != nil {
			ws = append(ws, Warning{Fields: map[string]any{"alias": alias, "key": k.KeyID, "error": err.Error()},
				Msg: fmt.Sprintf("alias %s does not resolve; this volume keeps using key %s as approved", alias, k.KeyID)})
			continue
		}
		srcs[i] = cur
	}
	return srcs, ws
}

// checkAliases refuses a volume whose AWS alias points at another key than
// the approved one, unless this host approved that target (kmsfs trust
// records it): following the alias would let whoever can move it choose
// the key new files are wrapped for, and staying silently on the old key
// would hide that the alias's owner meant a change (a key rotated away,
// or scheduled for deletion). An approved move leaves a Warning. It
// returns, for each key, the source its alias opened when that is the
// approved key and needs nothing more checked (no public key fingerprint),
// so that openAnchor does not open it again; nil for the others.
func checkAliases(ctx context.Context, a *volconf.Anchor, dir string) ([]keysource.KeySource, []Warning, error) {
	srcs, ws := aliasSources(ctx, &a.Conf)
	for i, k := range a.Conf.Keys {
		if srcs[i] == nil {
			continue
		}
		t := srcs[i].KeyID()
		if sameKey(t, k.KeyID) {
			if k.PublicKeySHA256 != "" {
				srcs[i] = nil
			}
			continue
		}
		srcs[i] = nil
		alias := volconf.AWSAlias(k.Spec)
		if t != a.Host[i].AliasKey {
			return nil, ws, fmt.Errorf("key %d: alias %s now points at key %s, not at key %s that this volume was approved with: %w; "+
				"to keep using %s, approve the change with `kmsfs trust %s`; to move to the new key, rewrap the volume or point the alias back",
				i+1, alias, t, k.KeyID, ErrAliasMoved, k.KeyID, dir)
		}
		ws = append(ws, Warning{Fields: map[string]any{"alias": alias, "key": k.KeyID, "alias_key": t},
			Msg: fmt.Sprintf("alias %s points at key %s; this volume keeps using key %s, as this host approved", alias, t, k.KeyID)})
	}
	return srcs, ws, nil
}

// HostKeyOf splits a key spec given to kmsfs init into what only the host
// keeps: a PKCS#11 module (from the spec, else KMSFS_PKCS11_MODULE from
// lookupEnv), PIN source, wrap choice and session cap; a key file's
// absolute path.
func HostKeyOf(spec keysource.Spec, lookupEnv func(string) (string, bool)) (volconf.HostKey, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	var h volconf.HostKey
	switch {
	case spec.Type == "pkcs11":
		u, err := pkcs11.ParseURI(spec.Value)
		if err != nil {
			return h, err
		}
		h.PKCS11Module, h.PKCS11PINSource = u.ModulePath, u.PINSource
		h.PKCS11Wrap, h.PKCS11MaxSessions = u.Wrap, u.MaxSessions
		if h.PKCS11Module == "" {
			h.PKCS11Module, _ = lookupEnv(pkcs11.EnvModule)
		}
		if h.PKCS11Module != "" && !filepath.IsAbs(h.PKCS11Module) {
			return h, fmt.Errorf("PKCS#11 module %s: give an absolute path", h.PKCS11Module)
		}
	case volconf.IsKeyFile(spec.String()):
		p, err := filepath.Abs(spec.Value)
		if err != nil {
			return h, err
		}
		h.KeyFile = p
	}
	return h, nil
}

// KeyFileID returns the key ID of the local key file at path for volume
// vid, to match a key file given on this host to the key kmsfs.conf names.
func KeyFileID(path string, vid envelope.VolumeID) (string, error) {
	src, err := local.Open(context.Background(), keysource.Spec{Type: local.Type, Value: path}, local.Options{VolumeID: vid})
	if err != nil {
		return "", err
	}
	defer src.Close()
	return src.KeyID(), nil
}

// CheckRoundTrip proves src makes a data key and unwraps it again before a
// volume depends on it, the way a mount will use it: a source that
// generates data keys (AWS symmetric: GenerateDataKey) is checked with
// that and Unwrap, so a least-privilege key policy (GenerateDataKey,
// Decrypt, DescribeKey; no Encrypt) passes; others wrap a random key and
// unwrap it. A wrap-only source (public key only) is checked by wrapping
// alone.
func CheckRoundTrip(ctx context.Context, src keysource.KeySource, wrapOnly bool) error {
	return checkRoundTrip(ctx, src, wrapOnly, true)
}

// checkRoundTrip is CheckRoundTrip for a primary key (generate: it makes
// the data keys of new files) or an escrow key (it wraps them).
func checkRoundTrip(ctx context.Context, src keysource.KeySource, wrapOnly, generate bool) error {
	var dk []byte
	var st keysource.Stanza
	var err error
	if g, ok := src.(keysource.Generator); ok && generate && !wrapOnly {
		dk, st, err = g.GenerateDataKey(ctx)
		if err != nil {
			return fmt.Errorf("making a test data key with %s: %w", src.KeyID(), err)
		}
	} else {
		dk = make([]byte, keysource.DataKeySize)
		if _, err := rand.Read(dk); err != nil {
			return err
		}
		if st, err = src.Wrap(ctx, dk); err != nil {
			return fmt.Errorf("wrapping a test key with %s: %w", src.KeyID(), err)
		}
	}
	defer clear(dk)
	if wrapOnly {
		return nil
	}
	got, err := src.Unwrap(ctx, st)
	if err != nil {
		return fmt.Errorf("unwrapping a test key with %s: %w", src.KeyID(), err)
	}
	defer clear(got)
	if string(got) != string(dk) {
		return fmt.Errorf("key %s returned a different key than it wrapped", src.KeyID())
	}
	return nil
}

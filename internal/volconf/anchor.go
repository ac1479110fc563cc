package volconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kmsfs/kmsfs/keysource/local"
)

// AnchorVersion is the version of the trust anchor this kmsfs writes and
// reads.
const AnchorVersion = 1

// KeyFileSpec is the spec kmsfs.conf records for a local key file. The
// file's path is a host setting: a path read from the cipher dir would let
// whoever controls the storage choose which host file the mount reads.
const KeyFileSpec = "local:key-file"

// passphraseSpec is the spec of a local passphrase key.
const passphraseSpec = "local:passphrase"

// Errors of the trust anchor, tested with errors.Is.
var (
	// ErrNotTrusted means the host has approved no volume of this ID.
	ErrNotTrusted = errors.New("volume not trusted on this host")
	// ErrInsecure means the trust dir or an anchor file could be changed by
	// someone other than its owner, or is a symbolic link.
	ErrInsecure = errors.New("trust anchor not safe to use")
)

// Anchor is what a host approved of one volume: its configuration, with
// key specs stripped of host-only parts, and the host-only settings of each
// key. It lives in the host's trust dir, never in the cipher dir; a mount
// builds its key sources from it and only checks kmsfs.conf against it.
type Anchor struct {
	Version int `json:"version"`
	// CipherDir is the absolute path the volume was approved at. It only
	// makes messages clearer: a volume may move.
	CipherDir string `json:"cipher_dir"`
	// Conf is the approved configuration; Conf.Keys[i].Spec holds no
	// host-only part (see StorageSpec).
	Conf Conf `json:"conf"`
	// Host holds the host-only settings of Conf.Keys[i] at index i.
	Host []HostKey `json:"host"`
	// Next is a change this host approved ahead of writing it to
	// kmsfs.conf (a rewrap changing the volume's keys): a kmsfs.conf that
	// matches Next is approved as well, so that no moment of the change
	// leaves a volume this host refuses.
	Next *Approval `json:"next,omitempty"`
}

// Approval is one approved configuration with its host settings.
type Approval struct {
	Conf Conf      `json:"conf"`
	Host []HostKey `json:"host"`
}

// Match returns the approval of a that cur matches, as an anchor without
// Next: a itself, or its Next. It returns nil and the differences from
// a.Conf when cur matches neither.
func (a *Anchor) Match(cur *Conf) (*Anchor, []string) {
	d := Diff(&a.Conf, cur)
	if len(d) == 0 {
		m := *a
		m.Next = nil
		return &m, nil
	}
	if a.Next != nil && len(Diff(&a.Next.Conf, cur)) == 0 {
		return &Anchor{Version: a.Version, CipherDir: a.CipherDir, Conf: a.Next.Conf, Host: a.Next.Host}, nil
	}
	return nil, d
}

// HostKey holds the settings of one key that come only from the host or
// its command line, never from the cipher dir.
type HostKey struct {
	// PKCS11Module is the PKCS#11 module a pkcs11 key loads; "" means the
	// KMSFS_PKCS11_MODULE environment variable.
	PKCS11Module string `json:"pkcs11_module,omitempty"`
	// PKCS11PINSource is file:/PATH or env:NAME; "" means KMSFS_PKCS11_PIN.
	PKCS11PINSource string `json:"pkcs11_pin_source,omitempty"`
	// PKCS11Wrap is the URI's wrap= choice for an AES key (gcm or kwp);
	// "" lets the token's mechanisms decide.
	PKCS11Wrap string `json:"pkcs11_wrap,omitempty"`
	// PKCS11MaxSessions is the URI's max-sessions= cap; 0 means the
	// token's own limit.
	PKCS11MaxSessions int `json:"pkcs11_max_sessions,omitempty"`
	// KeyFile is the absolute path of a local key file.
	KeyFile string `json:"key_file,omitempty"`
	// AliasKey is, for an AWS key given as an alias, the key ARN the alias
	// pointed at when this host last approved the volume. A volume whose
	// alias now points at another key than this and its own key ID does
	// not open until the host approves again.
	AliasKey string `json:"alias_key,omitempty"`
}

// StorageSpec returns spec as kmsfs.conf records it: a pkcs11 URI without
// its query (module-path, pin-source), a local key file as KeyFileSpec,
// anything else unchanged.
func StorageSpec(spec string) string {
	switch {
	case strings.HasPrefix(spec, "pkcs11:"):
		s, _, _ := strings.Cut(spec, "?")
		return s
	case strings.HasPrefix(spec, "local:") && spec != passphraseSpec:
		return KeyFileSpec
	}
	return spec
}

// IsKeyFile reports whether spec names a local key file (by path, or as
// KeyFileSpec).
func IsKeyFile(spec string) bool {
	return strings.HasPrefix(spec, "local:") && spec != passphraseSpec
}

// HostParts names the host-only parts spec carries, which a mount ignores
// when they come from kmsfs.conf (volumes made by older kmsfs versions
// kept them there).
func HostParts(spec string) []string {
	var parts []string
	switch {
	case strings.HasPrefix(spec, "pkcs11:"):
		_, q, _ := strings.Cut(spec, "?")
		for _, a := range strings.Split(q, "&") {
			name, _, _ := strings.Cut(a, "=")
			if name != "" {
				parts = append(parts, name)
			}
		}
	case IsKeyFile(spec) && spec != KeyFileSpec:
		parts = append(parts, "key file path")
	}
	return parts
}

// NewAnchor returns the anchor that approves c with the host settings
// host (one per key), approved at cipherDir. It copies c, with its specs
// made StorageSpecs.
func NewAnchor(c *Conf, host []HostKey, cipherDir string) (*Anchor, error) {
	abs, err := filepath.Abs(cipherDir)
	if err != nil {
		return nil, fmt.Errorf("volconf: %w", err)
	}
	a := &Anchor{Version: AnchorVersion, CipherDir: abs, Conf: *c, Host: slices.Clone(host)}
	a.Conf.Features = append([]string{}, c.Features...)
	a.Conf.Keys = make([]Key, len(c.Keys))
	for i, k := range c.Keys {
		k.Spec = StorageSpec(k.Spec)
		a.Conf.Keys[i] = k
	}
	if err := a.Check(); err != nil {
		return nil, err
	}
	return a, nil
}

// Check validates the anchor: a known version, a valid configuration, one
// host entry per key, and host settings that fit each key's type.
func (a *Anchor) Check() error {
	if a.Version != AnchorVersion {
		return fmt.Errorf("volconf: trust anchor version %d; this kmsfs understands version %d", a.Version, AnchorVersion)
	}
	if err := checkApproval(&a.Conf, a.Host); err != nil {
		return err
	}
	if n := a.Next; n != nil {
		if n.Conf.VolumeID != a.Conf.VolumeID {
			return fmt.Errorf("volconf: trust anchor approves a next configuration of volume %s, not %s", n.Conf.VolumeID, a.Conf.VolumeID)
		}
		if err := checkApproval(&n.Conf, n.Host); err != nil {
			return fmt.Errorf("%w (in the next configuration)", err)
		}
	}
	return nil
}

// checkApproval checks a configuration and its host settings.
func checkApproval(c *Conf, host []HostKey) error {
	if err := c.Check(); err != nil {
		return err
	}
	if len(host) != len(c.Keys) {
		return fmt.Errorf("volconf: trust anchor has host settings for %d keys, its configuration %d", len(host), len(c.Keys))
	}
	for i, k := range c.Keys {
		h := host[i]
		if k.Spec != StorageSpec(k.Spec) {
			return fmt.Errorf("volconf: trust anchor key %d: spec holds host settings", i+1)
		}
		isP11 := strings.HasPrefix(k.Spec, "pkcs11:")
		switch {
		case !isP11 && (h.PKCS11Module != "" || h.PKCS11PINSource != "" || h.PKCS11Wrap != "" || h.PKCS11MaxSessions != 0):
			return fmt.Errorf("volconf: trust anchor key %d: PKCS#11 settings for a %s key", i+1, k.Spec)
		case IsKeyFile(k.Spec) && !filepath.IsAbs(h.KeyFile):
			return fmt.Errorf("volconf: trust anchor key %d (%s): no absolute key file path", i+1, k.KeyID)
		case !IsKeyFile(k.Spec) && h.KeyFile != "":
			return fmt.Errorf("volconf: trust anchor key %d: a key file for a %s key", i+1, k.Spec)
		case h.AliasKey != "" && !IsAWSAlias(k.Spec):
			return fmt.Errorf("volconf: trust anchor key %d: an alias target for %s, which is not an AWS alias", i+1, k.Spec)
		case isP11 && h.PKCS11Module != "" && !filepath.IsAbs(h.PKCS11Module):
			return fmt.Errorf("volconf: trust anchor key %d: PKCS#11 module path %q is not absolute", i+1, h.PKCS11Module)
		}
	}
	return nil
}

// IsAWSAlias reports whether spec names an AWS KMS key by an alias
// (awskms:alias/NAME or an alias ARN).
func IsAWSAlias(spec string) bool { return AWSAlias(spec) != "" }

// AWSAlias returns the alias an awskms spec names, or "".
func AWSAlias(spec string) string {
	v, ok := strings.CutPrefix(spec, "awskms:")
	if ok && (strings.HasPrefix(v, "alias/") || strings.Contains(v, ":alias/")) {
		return v
	}
	return ""
}

// Role names the role of key i in a volume.
func Role(i int) string {
	if i == 0 {
		return "primary: wraps new data keys"
	}
	return "escrow"
}

// roleOf names the role of keys[i], a retiring key as such.
func roleOf(keys []Key, i int) string {
	if keys[i].Retiring {
		return "retiring: unwraps only"
	}
	return Role(i)
}

// Diff lists, one line each, how cur differs from the approved
// configuration: volume ID, versions, layout, policy, features, and keys
// added, removed, moved or changed (spec, KDF parameters). Specs are
// compared as StorageSpecs. No line means no difference.
func Diff(approved, cur *Conf) []string {
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	if approved.VolumeID != cur.VolumeID {
		add("volume ID: approved %s, kmsfs.conf has %s", approved.VolumeID, cur.VolumeID)
	}
	for _, f := range []struct {
		what      string
		was, have int
	}{
		{"configuration version", approved.Version, cur.Version},
		{"format version", approved.FormatVersion, cur.FormatVersion},
		{"layout: block size", approved.BlockSize, cur.BlockSize},
		{"layout: header slot size", approved.SlotSize, cur.SlotSize},
	} {
		if f.was != f.have {
			add("%s: approved %d, kmsfs.conf has %d", f.what, f.was, f.have)
		}
	}
	if approved.DataKeyPolicy != cur.DataKeyPolicy {
		add("data-key policy: approved %q, kmsfs.conf has %q", approved.DataKeyPolicy, cur.DataKeyPolicy)
	}
	if !slices.Equal(approved.Features, cur.Features) {
		add("features: approved %q, kmsfs.conf has %q", approved.Features, cur.Features)
	}
	if approved.NameKeyID != cur.NameKeyID {
		add("name key ID: approved %q, kmsfs.conf has %q", approved.NameKeyID, cur.NameKeyID)
	}
	find := func(keys []Key, id string) int {
		return slices.IndexFunc(keys, func(k Key) bool { return k.KeyID == id })
	}
	for i, k := range approved.Keys {
		j := find(cur.Keys, k.KeyID)
		if j < 0 {
			add("key removed: %s (key ID %s, %s)", k.Spec, k.KeyID, roleOf(approved.Keys, i))
			continue
		}
		c := cur.Keys[j]
		if i != j && k.Retiring == c.Retiring { // a key retiring moves behind the others: one line says both
			add("key %s moved: approved as key %d (%s), kmsfs.conf has it as key %d (%s)", k.KeyID, i+1, roleOf(approved.Keys, i), j+1, roleOf(cur.Keys, j))
		}
		if s := StorageSpec(c.Spec); s != k.Spec {
			add("key %s changed: spec approved %s, kmsfs.conf has %s", k.KeyID, k.Spec, s)
		}
		if k.Retiring != c.Retiring {
			add("key %s changed: approved as %s, kmsfs.conf has it %s", k.KeyID, roleOf(approved.Keys, i), roleOf(cur.Keys, j))
		}
		if k.PublicKeySHA256 != c.PublicKeySHA256 {
			add("key %s changed: public key fingerprint approved %q, kmsfs.conf has %q", k.KeyID, k.PublicKeySHA256, c.PublicKeySHA256)
		}
		if !sameKDF(k.KDF, c.KDF) {
			add("key %s changed: KDF parameters approved %s, kmsfs.conf has %s", k.KeyID, kdfString(k.KDF), kdfString(c.KDF))
		}
	}
	for j, c := range cur.Keys {
		if find(approved.Keys, c.KeyID) < 0 {
			add("key added: %s (key ID %s, %s)", StorageSpec(c.Spec), c.KeyID, roleOf(cur.Keys, j))
		}
	}
	return d
}

func sameKDF(a, b *local.KDFParams) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Alg == b.Alg && bytes.Equal(a.Salt, b.Salt) && a.LogN == b.LogN && a.R == b.R && a.P == b.P
}

func kdfString(p *local.KDFParams) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("%s salt %x…", p.String(), p.Salt[:min(4, len(p.Salt))])
}

// encodeAnchor returns a's JSON form.
func encodeAnchor(a *Anchor) ([]byte, error) {
	raw, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("volconf: %w", err)
	}
	return append(raw, '\n'), nil
}

// decodeAnchor parses and checks an anchor; name is for messages.
func decodeAnchor(raw []byte, name string) (*Anchor, error) {
	var a Anchor
	if err := decodeStrict(raw, &a); err != nil {
		return nil, fmt.Errorf("volconf: trust anchor %s is corrupt: %v", name, err)
	}
	if err := a.Check(); err != nil {
		return nil, fmt.Errorf("%w (in trust anchor %s)", err, name)
	}
	return &a, nil
}

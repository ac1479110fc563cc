package volume

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
)

// InitOptions say how Init makes a volume.
type InitOptions struct {
	// Keys are the key specs, primary first (awskms:…, pkcs11:…,
	// local:PATH, local:passphrase). At least one.
	Keys []string
	// BlockSize is the plaintext block size; 0 means
	// envelope.DefaultBlockSize.
	BlockSize int
	// SlotSize is the header slot size; 0 sizes it for the keys' stanzas.
	SlotSize int
	// Policy is the data-key reuse policy (keysource.ParsePolicy); ""
	// means "batched".
	Policy string
	// TrustDir is the host's trust dir where the volume is approved; ""
	// means the default (see Options.TrustDir).
	TrustDir string
	// Secrets say where a new passphrase and PINs come from.
	Secrets Secrets
	// EncryptedNames makes a volume whose file names and symlink targets
	// are encrypted: Init writes a fresh name key to NamesName and sets
	// the feature in kmsfs.conf. False keeps names as they are.
	EncryptedNames bool
}

// Init makes a new volume in cipherDir (created, or an existing empty
// directory): it opens every key, proves it wraps and unwraps, writes the
// name key file (EncryptedNames), approves the volume in the host's trust
// store and writes kmsfs.conf. It returns the anchor, whose Conf is the
// new configuration, and the path of the anchor file.
func Init(ctx context.Context, cipherDir string, o InitOptions) (*volconf.Anchor, string, error) {
	if len(o.Keys) == 0 {
		return nil, "", errors.New("volume: init needs at least one key")
	}
	if o.BlockSize == 0 {
		o.BlockSize = envelope.DefaultBlockSize
	}
	if o.Policy == "" {
		o.Policy = "batched"
	}
	if _, err := keysource.ParsePolicy(o.Policy); err != nil {
		return nil, "", err
	}
	if _, err := envelope.NewLayout(o.BlockSize, envelope.DefaultSlotSize); err != nil {
		return nil, "", err
	}
	store, err := OpenStore(o.TrustDir)
	if err != nil {
		return nil, "", err
	}
	// Refuse an unsafe trust dir before the keys are checked and anything
	// is written.
	if err := store.Check(); err != nil {
		return nil, "", err
	}
	if err := prepareCipherDir(cipherDir); err != nil {
		return nil, "", err
	}
	vid, err := volconf.NewVolumeID()
	if err != nil {
		return nil, "", err
	}
	conf := &volconf.Conf{
		Version: volconf.Version, VolumeID: hex.EncodeToString(vid[:]), FormatVersion: envelope.Version,
		BlockSize: o.BlockSize, SlotSize: o.SlotSize, DataKeyPolicy: o.Policy, Features: []string{},
	}
	ks := &keySet{}
	defer ks.Close()
	var stanzas []keysource.Stanza
	var host []volconf.HostKey
	for i, k := range o.Keys {
		st, key, h, err := ks.initKey(ctx, k, i == 0, vid, o.Secrets)
		if err != nil {
			return nil, "", fmt.Errorf("key %d (%s): %w", i+1, RedactSpec(k), err)
		}
		stanzas = append(stanzas, st)
		conf.Keys = append(conf.Keys, key)
		host = append(host, h)
	}
	if conf.SlotSize == 0 {
		if conf.SlotSize, err = envelope.SlotSizeFor(stanzas); err != nil {
			return nil, "", err
		}
	}
	if _, err := envelope.NewLayout(conf.BlockSize, conf.SlotSize); err != nil {
		return nil, "", err
	}
	if o.EncryptedNames {
		// The name key file goes before kmsfs.conf: a crash in between
		// leaves a directory that is not a volume yet, which init takes
		// again (prepareCipherDir).
		if conf.NameKeyID, err = initNameKey(ctx, cipherDir, conf, ks.list); err != nil {
			return nil, "", err
		}
		conf.Features = append(conf.Features, volconf.FeatureEncryptedNames)
	}
	a, err := volconf.NewAnchor(conf, host, cipherDir)
	if err != nil {
		return nil, "", err
	}
	// The anchor goes first: an anchor without its kmsfs.conf approves
	// nothing that exists, a kmsfs.conf without its anchor would not mount.
	if err := store.Save(a); err != nil {
		return nil, "", err
	}
	if err := volconf.Save(cipherDir, conf); err != nil {
		return nil, "", err
	}
	return a, store.Path(conf.VolumeID), nil
}

// initKey opens the key spec k for a new volume, proves it does what its
// role (primary: make data keys; escrow: wrap them) needs, and returns a sample stanza (to size the header slots), the
// key's entry of kmsfs.conf and its host settings.
func (s *keySet) initKey(ctx context.Context, k string, primary bool, vid envelope.VolumeID, sec Secrets) (keysource.Stanza, volconf.Key, volconf.HostKey, error) {
	var st keysource.Stanza
	spec, err := keysource.ParseSpec(k)
	if err != nil {
		return st, volconf.Key{}, volconf.HostKey{}, err
	}
	h, err := HostKeyOf(spec, sec.LookupEnv)
	if err != nil {
		return st, volconf.Key{}, h, err
	}
	if h.KeyFile != "" {
		spec.Value = h.KeyFile
	}
	src, kdf, err := s.open(ctx, spec, vid, volconf.Key{}, Options{Secrets: sec}, true)
	if err != nil {
		return st, volconf.Key{}, h, err
	}
	if err := checkRoundTrip(ctx, src, false, primary); err != nil {
		return st, volconf.Key{}, h, err
	}
	s.list = append(s.list, src)
	// A sample stanza sizes the header slots; a generating source makes
	// it as a mount will (GenerateDataKey), so init needs no more of the
	// key policy than a mount.
	if g, ok := src.(keysource.Generator); ok && primary {
		var dk []byte
		dk, st, err = g.GenerateDataKey(ctx)
		clear(dk)
	} else {
		st, err = src.Wrap(ctx, make([]byte, keysource.DataKeySize))
	}
	if err != nil {
		return st, volconf.Key{}, h, err
	}
	if volconf.IsAWSAlias(k) {
		h.AliasKey = src.KeyID()
	}
	key := volconf.Key{Spec: volconf.StorageSpec(k), KeyID: src.KeyID(), KDF: kdf}
	if fp, ok := src.(interface{ PublicKeyFingerprint() string }); ok {
		key.PublicKeySHA256 = fp.PublicKeyFingerprint()
	}
	return st, key, h, nil
}

// prepareCipherDir creates dir, or accepts it if it exists and is empty
// but for what an init that crashed before writing kmsfs.conf left: a
// name key file (replaced by the new one), temporary files of the name
// key file and kmsfs.conf (removed) and an empty journal directory.
func prepareCipherDir(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.MkdirAll(dir, 0o700)
	case err != nil:
		return err
	}
	var stale []string
	for _, e := range ents {
		switch name := e.Name(); {
		case name == ConfName:
			return fmt.Errorf("%s is already a kmsfs cipher dir", dir)
		case name == NamesName && e.Type().IsRegular():
		case (strings.HasPrefix(name, "."+NamesName+".kmsfs-tmp-") || strings.HasPrefix(name, ConfName+".tmp-")) && e.Type().IsRegular():
			stale = append(stale, name)
		case name == JournalName && e.IsDir() && isEmptyDir(filepath.Join(dir, name)):
		default:
			return fmt.Errorf("%s is not empty (it holds %s): init takes a new or empty directory", dir, name)
		}
	}
	for _, name := range stale {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("volume: remove what an earlier init left: %w", err)
		}
	}
	return nil
}

// isEmptyDir reports whether the directory dir holds no entry.
func isEmptyDir(dir string) bool {
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	return len(names) == 0 && err == io.EOF
}

// RedactSpec drops the query of a PKCS#11 URI (module path, PIN source),
// which is not secret but is noise in messages.
func RedactSpec(spec string) string {
	if i := strings.IndexByte(spec, '?'); i >= 0 && strings.HasPrefix(spec, "pkcs11:") {
		return spec[:i]
	}
	return spec
}

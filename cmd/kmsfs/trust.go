package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// trustDirFlag is the global flag that names the trust dir.
const trustDirFlag = "trust-dir"

// trustDirOf returns the --trust-dir value cmd sees ("" when not given).
func trustDirOf(cmd *cobra.Command) string {
	if f := cmd.Flag(trustDirFlag); f != nil {
		return f.Value.String()
	}
	return ""
}

// openStore returns the trust store named by the flag value dir, else by
// the environment and the user (volconf.DefaultTrustDir).
func openStore(dir string) (*volconf.Store, error) {
	if dir == "" {
		var err error
		if dir, err = volconf.DefaultTrustDir(os.Geteuid(), os.LookupEnv); err != nil {
			return nil, err
		}
	}
	return volconf.NewStore(dir, os.Geteuid()), nil
}

// loadTrusted reads dir's kmsfs.conf and checks it against this host's
// trust anchor. It returns the anchor: a mount takes its layout, policy
// and keys from there, never from the cipher dir.
func loadTrusted(dir, trustDir string) (*volconf.Anchor, error) {
	conf, err := volconf.Load(dir)
	if err != nil {
		return nil, err
	}
	store, err := openStore(trustDir)
	if err != nil {
		return nil, err
	}
	a, err := store.Load(conf.VolumeID)
	if errors.Is(err, volconf.ErrNotTrusted) {
		msg := fmt.Sprintf("volume %s in %s is not trusted on this host; review it and approve with `kmsfs trust %s`", conf.VolumeID, dir, dir)
		if ids := store.ApprovedAt(absPath(dir)); len(ids) > 0 {
			msg += fmt.Sprintf(" (this host approved volume %s there: was kmsfs.conf replaced?)", strings.Join(ids, ", "))
		}
		return nil, errors.New(msg)
	}
	if err != nil {
		return nil, err
	}
	if d := volconf.Diff(&a.Conf, conf); len(d) > 0 {
		return nil, fmt.Errorf("%s in %s differs from what this host approved for volume %s (%s):\n  - %s\nif you made this change, review and approve it with `kmsfs trust %s`",
			volconf.Name, dir, conf.VolumeID, store.Path(conf.VolumeID), strings.Join(d, "\n  - "), dir)
	}
	return a, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
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
		spec.Value = u.String()
	case volconf.IsKeyFile(k.Spec):
		spec.Value = h.KeyFile
	}
	return spec, nil
}

// openApproved opens key k of an approved volume with the host settings
// h and checks that it is the approved key.
func (s *sources) openApproved(ctx context.Context, k volconf.Key, h volconf.HostKey, vid envelope.VolumeID, so *secretOptions) (keysource.KeySource, error) {
	spec, err := hostSpec(k, h)
	if err != nil {
		return nil, err
	}
	src, _, err := s.open(ctx, spec, vid, k.KDF, so, false)
	if err != nil {
		return nil, err
	}
	if src.KeyID() != k.KeyID {
		return nil, fmt.Errorf("not the key this volume was approved with: it has key ID %s, the approved key ID is %s", src.KeyID(), k.KeyID)
	}
	return src, nil
}

// openAnchor opens every key source of an approved volume, primary
// first. An AWS key given as an alias is opened by its pinned ARN; if the
// alias now points elsewhere, log says so once.
func openAnchor(ctx context.Context, a *volconf.Anchor, so *secretOptions, log *logrus.Entry) (*sources, error) {
	vid, err := a.Conf.ID()
	if err != nil {
		return nil, err
	}
	s := &sources{}
	for i, k := range a.Conf.Keys {
		src, err := s.openApproved(ctx, k, a.Host[i], vid, so)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("key %d (%s): %w", i+1, k.KeyID, err)
		}
		if so.publicKeyFile == "" {
			warnMovedAlias(ctx, k, vid, log)
		}
		s.list = append(s.list, src)
	}
	return s, nil
}

// awsAlias returns the alias an awskms spec names, or "".
func awsAlias(spec string) string {
	v, ok := strings.CutPrefix(spec, "awskms:")
	if ok && (strings.HasPrefix(v, "alias/") || strings.Contains(v, ":alias/")) {
		return v
	}
	return ""
}

// warnMovedAlias logs one line if k was approved as an alias that now
// resolves to another key than the pinned one. The volume keeps its key:
// following the alias would let whoever can move it choose the key new
// files are wrapped for.
func warnMovedAlias(ctx context.Context, k volconf.Key, vid envelope.VolumeID, log *logrus.Entry) {
	alias := awsAlias(k.Spec)
	if alias == "" || log == nil {
		return
	}
	cur, err := awskms.Open(ctx, keysource.Spec{Type: awskms.Type, Value: alias}, awskms.Options{VolumeID: vid})
	fields := logrus.Fields{"alias": alias, "key": k.KeyID}
	switch {
	case err != nil:
		log.WithFields(fields).WithError(err).Warnf("alias %s does not resolve; this volume keeps using key %s as approved", alias, k.KeyID)
	case cur.KeyID() != k.KeyID:
		fields["alias_key"] = cur.KeyID()
		log.WithFields(fields).Warnf("alias %s now points at key %s; this volume keeps using key %s as approved; rewrap or trust to move", alias, cur.KeyID(), k.KeyID)
	}
}

// initHostKey splits a key spec given to kmsfs init into what kmsfs.conf
// records and what only the host keeps: a PKCS#11 module (from the spec,
// else KMSFS_PKCS11_MODULE) and PIN source, a key file's absolute path.
func initHostKey(spec keysource.Spec) (volconf.HostKey, error) {
	var h volconf.HostKey
	switch {
	case spec.Type == "pkcs11":
		u, err := pkcs11.ParseURI(spec.Value)
		if err != nil {
			return h, err
		}
		h.PKCS11Module, h.PKCS11PINSource = u.ModulePath, u.PINSource
		if h.PKCS11Module == "" {
			h.PKCS11Module = os.Getenv(pkcs11.EnvModule)
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

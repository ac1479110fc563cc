package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
	"github.com/kmsfs/kmsfs/volume"
)

type trustFlags struct {
	yes             bool
	readOnly        bool
	pkcs11Module    string
	pkcs11PINSource string
	keyFiles        []string
	passphraseFile  string
	timeout         time.Duration
}

func newTrustCmd() *cobra.Command {
	f := &trustFlags{}
	c := &cobra.Command{
		Use:   "trust [--yes] [--pkcs11-module PATH] [--pkcs11-pin-source SRC] [--key-file PATH]... CIPHERDIR",
		Short: "Approve a cipher dir's configuration on this host",
		Long: `trust shows CIPHERDIR's kmsfs.conf (volume ID, layout, data-key policy, each
key and its role) and, if this host approved the volume before, what changed;
asks for confirmation (or takes --yes); checks that each key works (a wrap and
unwrap round trip, or with --read-only only that the key opens and is the
named one); and records the configuration in this host's trust dir. Mounts
use only what the host approved: a volume synced from another host, made by
an older kmsfs, or changed on purpose needs kmsfs trust once.

Host settings never come from the cipher dir: a PKCS#11 key's module and PIN
source come from --pkcs11-module (or KMSFS_PKCS11_MODULE) and
--pkcs11-pin-source, a local key file's path from --key-file (matched to the
volume's keys by key ID), unless the host's earlier approval has them.`,
		Example: `  kmsfs trust /srv/cipher
  kmsfs trust --yes --key-file /etc/kmsfs/demo.key /srv/cipher
  kmsfs trust --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-pin-source file:/etc/kmsfs/pin /srv/cipher`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTrust(cmd.Context(), f, trustDirOf(cmd), args[0], cmd.OutOrStdout())
		},
	}
	fl := c.Flags()
	fl.BoolVarP(&f.yes, "yes", "y", false, "approve without asking (scripts)")
	fl.BoolVar(&f.readOnly, "read-only", false, "check only that each key opens and is the named key, not a wrap/unwrap round trip (decrypt-only or wrap-only keys)")
	fl.StringVar(&f.pkcs11Module, "pkcs11-module", "", "PKCS#11 module of the volume's pkcs11 keys (default: the earlier approval, else $"+pkcs11.EnvModule+")")
	fl.StringVar(&f.pkcs11PINSource, "pkcs11-pin-source", "", "PIN of the volume's pkcs11 keys: file:/PATH or env:NAME (default: the earlier approval, else $"+pkcs11.EnvPIN+")")
	fl.StringArrayVar(&f.keyFiles, "key-file", nil, "a local key file of the volume (repeatable; matched by key ID)")
	fl.StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	fl.DurationVar(&f.timeout, "timeout", 60*time.Second, "bound on the key checks")
	return c
}

func runTrust(ctx context.Context, f *trustFlags, trustDir, dir string, out io.Writer) error {
	conf, err := volconf.Load(dir)
	if err != nil {
		return err
	}
	store, err := volume.OpenStore(trustDir)
	if err != nil {
		return err
	}
	old, err := store.Load(conf.VolumeID)
	if err != nil && !errors.Is(err, volconf.ErrNotTrusted) {
		return err
	}
	printConf(out, dir, conf)
	var diffs []string
	if old != nil {
		diffs = volconf.Diff(&old.Conf, conf)
		if len(diffs) == 0 {
			fmt.Fprintf(out, "this host approved this configuration before (%s)\n", store.Path(conf.VolumeID))
		} else {
			fmt.Fprintf(out, "changed since this host approved it (%s):\n  - %s\n", store.Path(conf.VolumeID), strings.Join(diffs, "\n  - "))
		}
	} else {
		fmt.Fprintln(out, "this volume is not trusted on this host yet")
		if ids := store.ApprovedAt(volume.AbsPath(dir)); len(ids) > 0 {
			fmt.Fprintf(out, "WARNING: this host approved another volume at %s (%s): kmsfs.conf was replaced or the dir re-initialised\n", dir, strings.Join(ids, ", "))
		}
	}
	vid, err := conf.ID()
	if err != nil {
		return err
	}
	host, err := trustHostKeys(conf, old, f, vid)
	if err != nil {
		return err
	}
	trustAliases(ctx, f, conf, host, out)
	if old != nil && len(diffs) == 0 && slices.Equal(host, old.Host) {
		fmt.Fprintln(out, "nothing to approve")
		return nil
	}
	if !f.yes {
		if err := confirm(fmt.Sprintf("Trust this configuration of volume %s on this host? [y/N] ", conf.VolumeID), dir); err != nil {
			return err
		}
	}
	a, err := volconf.NewAnchor(conf, host, dir)
	if err != nil {
		return err
	}
	if err := store.Check(); err != nil {
		return err
	}
	if err := checkApproved(ctx, f, a); err != nil {
		return err
	}
	if err := store.Save(a); err != nil {
		return err
	}
	fmt.Fprintf(out, "approved: volume %s is trusted on this host (%s)\n", conf.VolumeID, store.Path(conf.VolumeID))
	return nil
}

// printConf shows what kmsfs trust asks the user to approve.
func printConf(out io.Writer, dir string, c *volconf.Conf) {
	fmt.Fprintf(out, "volume %s in %s\n", c.VolumeID, dir)
	fmt.Fprintf(out, "  format version %d, block size %d, header slot size %d\n", c.FormatVersion, c.BlockSize, c.SlotSize)
	fmt.Fprintf(out, "  data-key policy %s, features %q\n", c.DataKeyPolicy, c.Features)
	for i, k := range c.Keys {
		fmt.Fprintf(out, "  key %d (%s): %s, key ID %s", i+1, volconf.Role(i), volconf.StorageSpec(k.Spec), k.KeyID)
		if k.KDF != nil {
			fmt.Fprintf(out, ", KDF %s", k.KDF)
		}
		fmt.Fprintln(out)
		if parts := volconf.HostParts(k.Spec); len(parts) > 0 {
			fmt.Fprintf(out, "    note: kmsfs.conf gives this key's %s; ignored: host settings come from this host (--pkcs11-module, --pkcs11-pin-source, --key-file)\n",
				strings.Join(parts, ", "))
		}
	}
}

// trustHostKeys returns the host settings of each key of c: from the
// flags, else from the earlier approval old (same key ID), else from the
// environment. Nothing comes from kmsfs.conf.
func trustHostKeys(c *volconf.Conf, old *volconf.Anchor, f *trustFlags, vid envelope.VolumeID) ([]volconf.HostKey, error) {
	prev := func(keyID string) volconf.HostKey {
		if old == nil {
			return volconf.HostKey{}
		}
		for i, k := range old.Conf.Keys {
			if k.KeyID == keyID {
				return old.Host[i]
			}
		}
		return volconf.HostKey{}
	}
	fileIDs := map[string]string{} // key ID -> --key-file path
	for _, p := range f.keyFiles {
		h, err := volume.HostKeyOf(keysource.Spec{Type: "local", Value: p}, nil)
		if err != nil {
			return nil, err
		}
		id, err := volume.KeyFileID(h.KeyFile, vid)
		if err != nil {
			return nil, err
		}
		fileIDs[id] = h.KeyFile
	}
	host := make([]volconf.HostKey, len(c.Keys))
	for i, k := range c.Keys {
		p := prev(k.KeyID)
		switch {
		case strings.HasPrefix(k.Spec, "pkcs11:"):
			h := volconf.HostKey{PKCS11Module: f.pkcs11Module, PKCS11PINSource: f.pkcs11PINSource,
				PKCS11Wrap: p.PKCS11Wrap, PKCS11MaxSessions: p.PKCS11MaxSessions}
			if h.PKCS11Module == "" {
				h.PKCS11Module = p.PKCS11Module
			}
			if h.PKCS11Module == "" {
				h.PKCS11Module = os.Getenv(pkcs11.EnvModule)
			}
			if h.PKCS11PINSource == "" {
				h.PKCS11PINSource = p.PKCS11PINSource
			}
			if h.PKCS11Module == "" {
				return nil, fmt.Errorf("key %d (%s) needs its PKCS#11 module from this host: give --pkcs11-module PATH or set %s",
					i+1, k.KeyID, pkcs11.EnvModule)
			}
			host[i] = h
		case volconf.IsAWSAlias(k.Spec):
			host[i].AliasKey = p.AliasKey
		case volconf.IsKeyFile(k.Spec):
			host[i].KeyFile = fileIDs[k.KeyID]
			if host[i].KeyFile == "" {
				host[i].KeyFile = p.KeyFile
			}
			if host[i].KeyFile == "" {
				return nil, fmt.Errorf("key %d is a key file with key ID %s: give its path on this host with --key-file PATH", i+1, k.KeyID)
			}
		}
	}
	return host, nil
}

// trustAliases records in host where each AWS alias of c points now, and
// shows the aliases that point at another key than the volume's: approving
// records that this host knows, and the volume keeps its key. An alias
// that does not resolve keeps what the host approved before.
func trustAliases(ctx context.Context, f *trustFlags, c *volconf.Conf, host []volconf.HostKey, out io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	targets, ws := volume.AliasTargets(ctx, c)
	for _, w := range ws {
		fmt.Fprintf(out, "warning: %s\n", w.Msg)
	}
	for i, t := range targets {
		if t == "" {
			continue
		}
		host[i].AliasKey = t
		if k := c.Keys[i]; t != k.KeyID {
			fmt.Fprintf(out, "  key %d: alias %s now points at key %s; this volume keeps using key %s (approve to record that; rewrap to move)\n",
				i+1, volconf.AWSAlias(k.Spec), t, k.KeyID)
		}
	}
}

// checkApproved opens every key of a with the host's settings, checks it
// is the key kmsfs.conf names and, unless --read-only, that it wraps and
// unwraps.
func checkApproved(ctx context.Context, f *trustFlags, a *volconf.Anchor) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	o := volume.Options{Secrets: volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase}}
	return volume.CheckKeys(ctx, a, o, !f.readOnly)
}

// confirm asks question on the terminal and fails unless the answer is
// yes. Without a terminal it fails and points at --yes.
func confirm(question, dir string) error {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("no terminal to confirm on: review the configuration above and approve it with `kmsfs trust --yes %s`", dir)
	}
	defer tty.Close()
	fmt.Fprint(tty, question)
	line, err := bufio.NewReader(tty).ReadString('\n')
	if err != nil && line == "" {
		return fmt.Errorf("reading the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errors.New("not approved: nothing recorded")
}

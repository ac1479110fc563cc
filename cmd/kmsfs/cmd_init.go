package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
)

type initFlags struct {
	keys           []string
	blockSize      int
	slotSize       int
	policy         string
	passphraseFile string
	timeout        time.Duration
}

func newInitCmd() *cobra.Command {
	f := &initFlags{}
	c := &cobra.Command{
		Use:   "init [--key SPEC]... [--block-size N] [--data-key-policy P] CIPHERDIR",
		Short: "Create a cipher dir bound to one or more keys",
		Long: `init creates CIPHERDIR (or takes an empty one) and writes its kmsfs.conf. The
first --key generates the data keys of new files; each further --key adds an
escrow stanza to every file, so the file also opens with that key.

Key specs:
  awskms:<key id | key ARN | alias/NAME>      AWS KMS (symmetric or RSA ENCRYPT_DECRYPT)
  pkcs11:token=<label>;object=<key label>?module-path=<lib>&pin-source=file:<path>
  local:<path>                                a file of 32 random bytes
  local:passphrase                            from KMSFS_PASSPHRASE, --passphrase-file or a prompt

init checks that each key can wrap and unwrap before it writes anything, and
records what it made in this host's trust dir (see kmsfs trust): kmsfs.conf
keeps no host setting (PKCS#11 module and PIN source, key file paths), and a
mount uses only what the host approved.`,
		Example: `  head -c 32 /dev/urandom > /etc/kmsfs/demo.key && chmod 600 /etc/kmsfs/demo.key
  kmsfs init --key local:/etc/kmsfs/demo.key /srv/cipher
  kmsfs init --key awskms:alias/backups --key 'pkcs11:token=escrow;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kmsfs/pin' /srv/cipher
  kmsfs init --key awskms:alias/shred-me --data-key-policy per-file /srv/cipher`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInit(cmd.Context(), f, trustDirOf(cmd), args[0])
		},
	}
	c.Flags().StringArrayVar(&f.keys, "key", nil, "key spec (repeatable; the first generates data keys)")
	c.Flags().IntVar(&f.blockSize, "block-size", envelope.DefaultBlockSize, "plaintext block size: a power of two from 4096 to 1048576")
	c.Flags().IntVar(&f.slotSize, "header-slot-size", 0, "header slot size in bytes (0: chosen to fit the keys)")
	c.Flags().StringVar(&f.policy, "data-key-policy", "batched", "data-key reuse: per-file, batched, or batched:max-files=N,max-age=D")
	c.Flags().StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	c.Flags().DurationVar(&f.timeout, "timeout", 60*time.Second, "bound on the key checks")
	return c
}

func runInit(ctx context.Context, f *initFlags, trustDir, dir string) error {
	if len(f.keys) == 0 {
		return errors.New("init needs at least one --key")
	}
	if _, err := keysource.ParsePolicy(f.policy); err != nil {
		return err
	}
	if _, err := envelope.NewLayout(f.blockSize, envelope.DefaultSlotSize); err != nil {
		return err
	}
	store, err := openStore(trustDir)
	if err != nil {
		return err
	}
	// Refuse an unsafe trust dir before the keys are checked and anything
	// is written.
	if err := store.Check(); err != nil {
		return err
	}
	if err := prepareCipherDir(dir); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	vid, err := volconf.NewVolumeID()
	if err != nil {
		return err
	}
	so := &secretOptions{passphraseFile: f.passphraseFile, prompt: promptPassphrase}
	srcs := &sources{}
	defer srcs.Close()
	conf := &volconf.Conf{
		Version: volconf.Version, VolumeID: hex.EncodeToString(vid[:]), FormatVersion: envelope.Version,
		BlockSize: f.blockSize, DataKeyPolicy: f.policy, Features: []string{},
	}
	var stanzas []keysource.Stanza
	var host []volconf.HostKey
	for i, k := range f.keys {
		spec, err := keysource.ParseSpec(k)
		if err != nil {
			return err
		}
		h, err := initHostKey(spec)
		if err != nil {
			return fmt.Errorf("key %d (%s): %w", i+1, redactSpec(k), err)
		}
		if h.KeyFile != "" {
			spec.Value = h.KeyFile
		}
		src, kdf, err := srcs.open(ctx, spec, vid, nil, so, true)
		if err != nil {
			return fmt.Errorf("key %d (%s): %w", i+1, redactSpec(k), err)
		}
		if err := checkRoundTrip(ctx, src, false); err != nil {
			return fmt.Errorf("key %d (%s): %w", i+1, redactSpec(k), err)
		}
		dk := make([]byte, keysource.DataKeySize)
		st, err := src.Wrap(ctx, dk)
		if err != nil {
			return err
		}
		stanzas = append(stanzas, st)
		conf.Keys = append(conf.Keys, volconf.Key{Spec: volconf.StorageSpec(k), KeyID: src.KeyID(), KDF: kdf})
		host = append(host, h)
	}
	conf.SlotSize = f.slotSize
	if conf.SlotSize == 0 {
		if conf.SlotSize, err = envelope.SlotSizeFor(stanzas); err != nil {
			return err
		}
	}
	if _, err := envelope.NewLayout(conf.BlockSize, conf.SlotSize); err != nil {
		return err
	}
	a, err := volconf.NewAnchor(conf, host, dir)
	if err != nil {
		return err
	}
	// The anchor goes first: an anchor without its kmsfs.conf approves
	// nothing that exists, a kmsfs.conf without its anchor would not mount.
	if err := store.Save(a); err != nil {
		return err
	}
	if err := volconf.Save(dir, conf); err != nil {
		return err
	}
	fmt.Printf("kmsfs: initialised %s (volume %s, block size %d)\n", dir, conf.VolumeID, conf.BlockSize)
	for i, k := range conf.Keys {
		fmt.Printf("  key %d (%s): %s\n", i+1, volconf.Role(i), k.KeyID)
	}
	fmt.Printf("trusted on this host: %s\n", store.Path(conf.VolumeID))
	fmt.Printf("mount it with: kmsfs mount %s MOUNTPOINT\n", dir)
	return nil
}

// prepareCipherDir creates dir, or accepts it if it exists and is empty.
func prepareCipherDir(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.MkdirAll(dir, 0o700)
	case err != nil:
		return err
	}
	for _, e := range ents {
		if e.Name() == volconf.Name {
			return fmt.Errorf("%s is already a kmsfs cipher dir", dir)
		}
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s is not empty: init takes a new or empty directory", dir)
	}
	return nil
}

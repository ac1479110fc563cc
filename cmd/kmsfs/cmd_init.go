package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

type initFlags struct {
	keys           []string
	blockSize      int
	slotSize       int
	policy         string
	passphraseFile string
	timeout        time.Duration
	plaintextNames bool
}

func newInitCmd() *cobra.Command {
	f := &initFlags{}
	c := &cobra.Command{
		Use:   "init [--key SPEC]... [--block-size N] [--data-key-policy P] [--plaintext-names] CIPHERDIR",
		Short: "Create a cipher dir bound to one or more keys",
		Long: `init creates CIPHERDIR (or takes an empty one) and writes its kmsfs.conf. The
first --key generates the data keys of new files; each further --key adds an
escrow stanza to every file, so the file also opens with that key.

File names and symlink targets are encrypted: init writes a name key file,
kmsfs.names, wrapped by the same keys. --plaintext-names keeps them in clear
(a volume's choice is fixed at init; volumes made before keep theirs).

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
  kmsfs init --key awskms:alias/shred-me --data-key-policy per-file /srv/cipher
  kmsfs init --key local:/etc/kmsfs/demo.key --plaintext-names /srv/cipher-plain-names`,
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
	c.Flags().BoolVar(&f.plaintextNames, "plaintext-names", false, "keep file names and symlink targets in clear in CIPHERDIR (by default they are encrypted)")
	// The default since names are encrypted; kept so scripts written before still run.
	c.Flags().Bool("encrypted-names", true, "encrypt file names and symlink targets (the default)")
	c.Flags().MarkHidden("encrypted-names")
	c.MarkFlagsMutuallyExclusive("plaintext-names", "encrypted-names")
	return c
}

func runInit(ctx context.Context, f *initFlags, trustDir, dir string) error {
	if len(f.keys) == 0 {
		return errors.New("init needs at least one --key")
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	a, anchorPath, err := volume.Init(ctx, dir, volume.InitOptions{
		Keys: f.keys, BlockSize: f.blockSize, SlotSize: f.slotSize, Policy: f.policy, TrustDir: trustDir,
		Secrets:        volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase},
		EncryptedNames: !f.plaintextNames,
	})
	if err != nil {
		return err
	}
	conf := &a.Conf
	fmt.Printf("kmsfs: initialised %s (volume %s, block size %d)\n", dir, conf.VolumeID, conf.BlockSize)
	if conf.EncryptedNames() {
		fmt.Printf("  names encrypted (name key %s in %s)\n", conf.NameKeyID, volume.NamesName)
	}
	for i, k := range conf.Keys {
		fmt.Printf("  key %d (%s): %s\n", i+1, volconf.Role(i), k.KeyID)
	}
	fmt.Printf("trusted on this host: %s\n", anchorPath)
	fmt.Printf("mount it with: kmsfs mount %s MOUNTPOINT\n", dir)
	return nil
}

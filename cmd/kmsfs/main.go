// Command kmsfs creates, mounts and manages kmsfs volumes: directories
// whose files are encrypted with per-file data keys held in AWS KMS, a
// PKCS#11 token, or a local key.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

func main() {
	if err := setNonDumpable(); err != nil {
		fmt.Fprintln(os.Stderr, "kmsfs:", err)
		os.Exit(1)
	}
	root := newRootCmd()
	args, err := mountHelperArgs(root, os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmsfs:", err)
		os.Exit(exitError)
	}
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		// A command that ends with an exit code printed its report.
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "kmsfs:", err)
		os.Exit(exitError)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "kmsfs",
		Short: "Transparent file encryption with keys held in a KMS",
		Long: `kmsfs mounts a cipher dir as a plain directory. Every file in the cipher dir
carries its own data key, wrapped by AWS KMS, a PKCS#11 token or a local key;
applications read and write plain files at the mount point.`,
		Example: `  kmsfs init --key awskms:alias/backups /srv/cipher
  kmsfs mount /srv/cipher /mnt/plain
  kmsfs trust /srv/cipher      # approve a volume synced from another host
  kmsfs status /srv/cipher     # which keys the files depend on, and their state
  kmsfs fsck /srv/cipher       # check every header and block
  kmsfs rewrap --to awskms:alias/backups /srv/cipher   # rotate to the alias's new key
  kmsfs info /mnt/plain/report.pdf
  kmsfs unmount /mnt/plain`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String(trustDirFlag, "", "the host's trust dir of approved volumes (default $KMSFS_TRUST_DIR, else /etc/kmsfs/trust for root, else ~/.config/kmsfs/trust)")
	root.AddCommand(newInitCmd(), newMountCmd(), newUnmountCmd(), newTrustCmd(), newStatusCmd(), newInfoCmd(), newEncryptCmd(), newDecryptCmd(), newFsckCmd(), newRewrapCmd())
	root.AddCommand(extraCommands()...)
	return root
}

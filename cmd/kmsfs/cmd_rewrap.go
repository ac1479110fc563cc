package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/volume"
)

// exitIncomplete is kmsfs rewrap's exit code when some file could not be
// rewrapped: the volume stays usable, and a rerun finishes the job.
const exitIncomplete = 4

type rewrapFlags struct {
	json           bool
	passphraseFile string
	timeout        time.Duration
	o              volume.RewrapOptions
}

func newRewrapCmd() *cobra.Command {
	f := &rewrapFlags{}
	c := &cobra.Command{
		Use:   "rewrap [--to KEY [--from KEY] | --add KEY | --remove KEY] [--json] CIPHERDIR",
		Short: "Rotate a volume's keys by rewriting file headers, never content",
		Long: `rewrap changes the keys of the volume in CIPHERDIR and rewrites the header of
every file to match: each file's data key is unwrapped once (files that share
a data key share the work) and wrapped for the new keys; content is never
rewritten. Between two AWS KMS keys the new stanza comes from KMS ReEncrypt.

  --to KEY            KEY replaces the primary key (or the key --from names):
                      new files use it, and every file's stanza of the old
                      key is replaced by one of KEY
  --add KEY           KEY becomes an escrow key: every file gains a stanza
  --remove KEY        KEY leaves the volume; files only it opened are moved
                      to the remaining keys (the volume's only key cannot go)
  (none)              finish an interrupted rewrap, and bring every file in
                      line with kmsfs.conf

KEY is a key spec as kmsfs init takes it (awskms:alias/NAME, awskms:ARN,
pkcs11:token=T;object=K, local:/path/key-file); --from and --remove also take
a key ID as kmsfs status prints it. An alias is resolved now and its key ARN
recorded: point the alias at a new key, then run
  kmsfs rewrap --to awskms:alias/NAME CIPHERDIR

kmsfs.conf and this host's trust anchor follow the change (a rewrap run on
this host approves its own change; other hosts approve it with kmsfs trust).
While files are rewrapped the old key stays in kmsfs.conf as "retiring": it
only unwraps, so files not yet rewrapped keep opening, and it leaves once no
file has a stanza of it. A stop at any moment (crash, SIGKILL, power loss)
leaves every file readable under its old or its new key; run kmsfs rewrap
CIPHERDIR again to finish.

On a mounted volume, rewrap asks the mount (root or the user it runs as
only): the mount switches new files to the new keys at once and rewraps
each file through its own open-file state, so open files keep working.

On a terminal (stderr), without --json, a progress bar shows the files done.

Each file that failed is listed by its path in CIPHERDIR; on a volume with
encrypted names the next line gives its plain path, the path a mount shows
(found through the mount, or decrypted with the volume's name key), or why
it has none (a name that fails to authenticate is never guessed). --json
gives them as failed[].plain_path and failed[].name_error.

Exit status:
  0  done: every file is under the volume's keys, no key is retiring
  4  incomplete: some files could not be rewrapped (listed, with the cause);
     the volume stays usable; fix the cause and run rewrap again
  1  error: nothing or only kmsfs.conf changed (the message says which)`,
		Example: `  # rotation: point the alias at the new key, then
  aws kms update-alias --alias-name alias/backups --target-key-id NEW-KEY-ID
  kmsfs rewrap --to awskms:alias/backups /srv/cipher

  # add an HSM escrow key to every file, later take the old KMS key out
  kmsfs rewrap --add 'pkcs11:token=escrow;object=kmsfs-escrow' /srv/cipher
  kmsfs rewrap --remove arn:aws:kms:eu-west-1:111122223333:key/OLD-KEY-ID /srv/cipher

  # replace an escrow key only
  kmsfs rewrap --from local:/etc/kmsfs/old.key --to local:/etc/kmsfs/new.key /srv/cipher

  # finish a rewrap a crash interrupted
  kmsfs rewrap /srv/cipher`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, f.timeout)
			defer cancel()
			dir := args[0]
			o := f.o
			o.TrustDir = trustDirOf(cmd)
			o.Secrets = volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase}
			var bar *progressbar.ProgressBar
			if barWanted(f.json) {
				bar = newBar(os.Stderr, "rewrap", progressbar.OptionShowCount())
				o.Progress = func(done, total int64) {
					if bar.GetMax64() != total {
						bar.ChangeMax64(total)
					}
					bar.Set64(done)
				}
			}
			r, err := rewrap(ctx, dir, o)
			endBar(bar)
			if err != nil && r == nil {
				return err
			}
			if rerr := report(cmd.OutOrStdout(), f.json, r, func(out io.Writer) { printRewrap(out, r) }); rerr != nil {
				return rerr
			}
			if err != nil {
				return err
			}
			if !r.Done() {
				return exitCode(exitIncomplete)
			}
			return nil
		},
	}
	c.Flags().StringVar(&f.o.To, "to", "", "key spec that replaces the primary key (or the key --from names)")
	c.Flags().StringVar(&f.o.From, "from", "", "the key --to replaces (key ID or spec; default: the primary)")
	c.Flags().StringVar(&f.o.Add, "add", "", "key spec to add as an escrow key")
	c.Flags().StringVar(&f.o.Remove, "remove", "", "key (ID or spec) to take out of the volume")
	c.Flags().IntVar(&f.o.Concurrency, "concurrency", volume.DefaultRewrapConcurrency, "files rewrapped at once (bounds the key-service calls in flight)")
	c.Flags().BoolVar(&f.json, "json", false, "print the report as JSON")
	c.Flags().StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	c.Flags().DurationVar(&f.timeout, "timeout", 24*time.Hour, "bound on the whole rewrap")
	return c
}

// rewrap runs the rewrap through the read-write mount of the volume if
// there is one, else offline; read-only mounts are asked to reload.
func rewrap(ctx context.Context, dir string, o volume.RewrapOptions) (*volume.RewrapReport, error) {
	ms, err := volume.MountsOf(dir)
	if err != nil {
		return nil, err
	}
	rw := ""
	for _, m := range ms {
		if m.ReadOnly {
			o.Reload = append(o.Reload, m.Point)
		} else {
			rw = m.Point
		}
	}
	if rw != "" {
		return volume.RewrapMounted(ctx, dir, rw, o)
	}
	return volume.Rewrap(ctx, dir, o)
}

// printRewrap writes the human report.
func printRewrap(out io.Writer, r *volume.RewrapReport) {
	for _, c := range r.Changes {
		fmt.Fprintf(out, "kmsfs.conf: %s\n", c)
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(out, "warning: %s\n", w)
	}
	fmt.Fprintf(out, "%s: %d files: %d rewrapped (%d distinct data keys), %d already current, %d empty, %d not of this volume\n",
		r.Dir, r.Files, r.Rewrapped, r.DataKeys, r.Current, r.Empty, r.Foreign)
	for _, f := range r.Failed {
		fmt.Fprintf(out, "  failed: %s: %s\n", f.Path, f.Error)
		printPlainPath(out, "    ", f.PlainPath, f.NameError)
	}
	if n := r.FailedFiles - int64(len(r.Failed)); n > 0 {
		fmt.Fprintf(out, "  … and %d more failed\n", n)
	}
	fmt.Fprintf(out, "keys: %s\n", strings.Join(r.Keys, ", "))
	if len(r.Retired) > 0 {
		fmt.Fprintf(out, "retired (no file depends on them any more): %s\n", strings.Join(r.Retired, ", "))
	}
	if len(r.Retiring) > 0 {
		fmt.Fprintf(out, "still retiring (some files depend on them): %s\n  fix the failures above and run kmsfs rewrap %s again\n", strings.Join(r.Retiring, ", "), r.Dir)
	}
	if r.Done() {
		fmt.Fprintln(out, "done: every file is under the volume's keys")
	}
}

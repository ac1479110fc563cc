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

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/volume"
)

// exitDamage is kmsfs fsck's exit code when it found a file that is not
// intact or journal records still pending.
const exitDamage = 4

type fsckFlags struct {
	json           bool
	repair         bool
	passphraseFile string
	timeout        time.Duration
}

func newFsckCmd() *cobra.Command {
	f := &fsckFlags{}
	c := &cobra.Command{
		Use:   "fsck [--json] [--repair] CIPHERDIR",
		Short: "Check every header and block of a volume's files",
		Long: `fsck opens every file in CIPHERDIR with its key and authenticates both header
slots and every block, several files at a time. It reports per file: damaged
blocks (by index and plaintext offset), a damaged header slot, a file cut
short, files that are not kmsfs files of this volume (foreign), files whose
key is unavailable, and the journal's records of writes a crash interrupted.

Without --repair fsck writes nothing: it opens no journal (a mount may be
running) and lists the journal directory's entries instead. With --repair it
opens the journal (the volume must not be mounted) and applies its pending
records, finishing or undoing the interrupted writes, and nothing else: it
never rewrites a damaged block or invents data. Restore damaged files from a
backup; kmsfs decrypt recovers the part of a file before its first bad block.

Symbolic links and other special entries are never followed or opened.

Exit status:
  0  clean: every file intact, nothing pending in the journal
  4  damage found: some file is damaged, foreign, unreadable or has no
     usable key, or journal records are pending
  1  error (no volume, not approved on this host, unreadable cipher dir)`,
		Example: `  kmsfs fsck /srv/cipher
  kmsfs fsck --json /srv/cipher | jq '.problems[] | select(.state == "damaged")'
  kmsfs fsck --repair /srv/cipher   # after a crash, with the volume unmounted`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, f.timeout)
			defer cancel()
			v, err := volume.Open(ctx, args[0], volume.Options{TrustDir: trustDirOf(cmd), ReadOnly: !f.repair,
				Secrets: volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase}, Mem: secmem.New(secmem.Options{})})
			if err != nil {
				return err
			}
			defer v.Close()
			for _, w := range v.Warnings {
				fmt.Fprintf(os.Stderr, "kmsfs: warning: %s\n", w.Msg)
			}
			r, err := v.Fsck(ctx, volume.FsckOptions{Repair: f.repair})
			if err != nil {
				return err
			}
			if err := report(cmd.OutOrStdout(), f.json, r, func(out io.Writer) { printFsck(out, r, f.repair) }); err != nil {
				return err
			}
			if !r.Clean() {
				return exitCode(exitDamage)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&f.json, "json", false, "print the report as JSON")
	c.Flags().BoolVar(&f.repair, "repair", false, "apply the journal's pending records (the volume must not be mounted); nothing else is changed")
	c.Flags().StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	c.Flags().DurationVar(&f.timeout, "timeout", 24*time.Hour, "bound on the whole check")
	return c
}

// printFsck writes the human report: one line per file that is not ok,
// then the journal and the totals.
func printFsck(out io.Writer, r *volume.FsckReport, repair bool) {
	fmt.Fprintf(out, "volume %s in %s: %d files checked, %d ok\n", r.Volume, r.Dir, r.Files, r.OK)
	for _, p := range r.Problems {
		fmt.Fprintf(out, "\n%s: %s", p.Path, p.State)
		if p.Detail != "" {
			fmt.Fprintf(out, ": %s", p.Detail)
		}
		fmt.Fprintln(out)
		if len(p.BadSlots) > 0 {
			fmt.Fprintf(out, "  header slots failing: %v\n", p.BadSlots)
		}
		for _, b := range p.Blocks {
			fmt.Fprintf(out, "  block %d (plaintext offset %d) fails to authenticate\n", b.Index, b.Offset)
		}
		if p.Truncated {
			fmt.Fprintln(out, "  cut short")
		}
		if p.Recovered {
			fmt.Fprintln(out, "  journal records applied to it")
		}
	}
	if len(r.Journal) > 0 {
		fmt.Fprintf(out, "\njournal holds %d entries (writes a crash interrupted): %s\n  run kmsfs fsck --repair with the volume unmounted to apply them\n",
			len(r.Journal), strings.Join(r.Journal, ", "))
	}
	if repair {
		fmt.Fprintf(out, "\nrepair: %d journal records applied, %d pending\n", r.Repaired, r.Pending)
		if r.RepairError != "" {
			fmt.Fprintf(out, "repair: %s\n", r.RepairError)
		}
	}
	if r.Skipped > 0 {
		fmt.Fprintf(out, "\n%d symbolic links or special files skipped unopened\n", r.Skipped)
	}
	if r.Clean() {
		fmt.Fprintln(out, "\nclean: every file intact")
	}
}

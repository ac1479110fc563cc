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
short, crash remnants, files that are not kmsfs files of this volume
(foreign), files whose key is unavailable, and the journal's records of
writes a crash interrupted. On a terminal (stderr), without --json, a
progress bar shows the cipher bytes checked.

A crash remnant is a block sealed as the file's last block that is not its
last: a truncate, or a write past the end, stopped by a crash between its
steps. It reads correctly; --repair reseals it with the same plaintext.

Without --repair fsck writes nothing: it opens no journal (a mount may be
running) and lists the journal directory's entries instead. With --repair it
opens the journal (the volume must not be mounted), applies its pending
records, finishing or undoing the interrupted writes, and reseals the crash
remnants of files that are otherwise intact (through the journal), and
nothing else: it never rewrites a damaged block or invents data. Restore
damaged files from a backup; kmsfs decrypt recovers the part of a file
before its first bad block.

Symbolic links and other special entries are never followed or opened.

On a volume with encrypted names, each file listed is followed by its plain
path, the path a mount shows, decrypted with the volume's name key (so
"plain path: reports/q3.pdf"), or by why it has none: a name on its path
that fails to authenticate (changed, or moved from another directory) is
never guessed. The side files that hold long names are kmsfs's own and
counted with the special entries. A volume whose name key file (kmsfs.names)
is missing, damaged or holds another key than this host approved, which no
mount opens, is still checked: that file is reported as the problem, with the
cause, and every other file by its path in CIPHERDIR alone.

Per file, a state: ok, empty (no header: a file created and never written),
damaged, crash-remnants, foreign, key-unavailable, unreadable, and, with
encrypted names, bad-name: the file reads intact but its name, or a name on
its path, fails to authenticate (changed, or moved there from another
directory), so a mount does not show it.

--json prints one object:
  cipher_dir, volume_id       the volume checked
  files, ok, bytes            regular files checked, those intact with nothing
                              repaired, and their cipher bytes
  skipped                     links and special files left unopened
  problems[]                  each file not ok, or that --repair changed:
    path                      relative to CIPHERDIR
    plain_path                the path in a mount, with encrypted names
    name_error                why there is none: a name on the path fails
                              to authenticate, or is unreadable
    state                     one of the states above
    detail                    why, in words
    bad_header_slots[]        header slots (0, 1) that fail to authenticate
    damaged_blocks[]          {index, offset}: blocks that fail to
                              authenticate, offset in plaintext bytes
    truncated                 the file was cut short (or its tail changed)
    remnant_blocks[]          {index, offset}: crash remnants
    remnants_cleared          how many of them --repair resealed
    recovered                 --repair applied journal records to it
  journal_entries[]           journal records seen by a read-only check
  pending_journal_records     records not applied (read-write only)
  repaired                    journal records applied by --repair
  repair_error                the first error applying them
  remnants_cleared            crash remnants resealed by --repair, in all
  name_key_error              why the name key file (kmsfs.names) was
                              refused; it is listed in problems[]
Fields whose value is empty, false or zero inside problems[] are left out.

Exit status:
  0  clean: every file intact, no crash remnant left, nothing pending in the
     journal (after --repair: once it has set everything right)
  4  damage found: some file is damaged, foreign, unreadable, has no usable
     key, holds crash remnants or has a bad name, the name key file is
     refused, or journal records are pending
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
			// A refused name key file is a finding of the check, not a
			// reason to check nothing: the files are checked by their
			// cipher paths.
			v, err := volume.Open(ctx, args[0], volume.Options{TrustDir: trustDirOf(cmd), ReadOnly: !f.repair, NameKeyMayFail: true,
				Secrets: volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase}, Mem: secmem.New(secmem.Options{})})
			if err != nil {
				return err
			}
			defer v.Close()
			for _, w := range v.Warnings {
				fmt.Fprintf(os.Stderr, "kmsfs: warning: %s\n", w.Msg)
			}
			o := volume.FsckOptions{Repair: f.repair}
			var bar *fsckBar
			if barWanted(f.json) {
				bar = newFsckBar(os.Stderr)
				o.Progress = bar.update
			}
			r, err := v.Fsck(ctx, o)
			bar.finish()
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
	c.Flags().BoolVar(&f.repair, "repair", false, "apply the journal's pending records and reseal crash remnants (the volume must not be mounted); nothing else is changed")
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
		printPlainPath(out, "  ", p.PlainPath, p.NameError)
		if len(p.BadSlots) > 0 {
			fmt.Fprintf(out, "  header slots failing: %v\n", p.BadSlots)
		}
		for _, b := range p.Blocks {
			fmt.Fprintf(out, "  block %d (plaintext offset %d) fails to authenticate\n", b.Index, b.Offset)
		}
		if p.Truncated {
			fmt.Fprintln(out, "  cut short")
		}
		for _, b := range p.Remnants {
			fmt.Fprintf(out, "  block %d (plaintext offset %d) is a crash remnant\n", b.Index, b.Offset)
		}
		if p.RemnantsCleared > 0 {
			fmt.Fprintf(out, "  %d crash remnants resealed\n", p.RemnantsCleared)
		}
		if p.Recovered {
			fmt.Fprintln(out, "  journal records applied to it")
		}
	}
	if r.NameKeyError != "" {
		fmt.Fprintf(out, "\nname key refused (%s above): files are named by their paths in the cipher dir only\n", volume.NamesName)
	}
	if len(r.Journal) > 0 {
		fmt.Fprintf(out, "\njournal holds %d entries (writes a crash interrupted): %s\n  run kmsfs fsck --repair with the volume unmounted to apply them\n",
			len(r.Journal), strings.Join(r.Journal, ", "))
	}
	if repair {
		fmt.Fprintf(out, "\nrepair: %d journal records applied, %d pending; %d crash remnants resealed\n", r.Repaired, r.Pending, r.RemnantsCleared)
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

// printPlainPath writes, after a file's line, its plain path on a volume
// with encrypted names, or why it has none; nothing when neither is known
// (plaintext names, kmsfs's own files).
func printPlainPath(out io.Writer, indent, plain, why string) {
	switch {
	case plain != "":
		fmt.Fprintf(out, "%splain path: %s\n", indent, plain)
	case why != "":
		fmt.Fprintf(out, "%sno plain path: %s\n", indent, why)
	}
}

// fsckBar draws a check's progress on a terminal: cipher bytes against the
// first pass's total, the files counted in its description. A nil *fsckBar
// draws nothing.
type fsckBar struct {
	bar   *progressbar.ProgressBar
	files int64
	shown time.Time
}

func newFsckBar(w io.Writer) *fsckBar {
	return &fsckBar{bar: newBar(w, "checking", progressbar.OptionShowBytes(true), progressbar.OptionSetWidth(30))}
}

// update is the check's progress callback; the check never calls it
// concurrently.
func (b *fsckBar) update(p volume.FsckProgress) {
	if p.TotalBytes != b.bar.GetMax64() {
		b.bar.ChangeMax64(p.TotalBytes)
	}
	if p.Files != b.files && (time.Since(b.shown) >= barInterval || p.Files == p.TotalFiles) {
		b.files, b.shown = p.Files, time.Now()
		b.bar.Describe(fmt.Sprintf("checking: %d/%d files", p.Files, p.TotalFiles))
	}
	b.bar.Set64(p.Bytes)
}

// finish takes the bar off the terminal before the report is printed.
func (b *fsckBar) finish() {
	if b != nil {
		endBar(b.bar)
	}
}

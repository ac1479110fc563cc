package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/volume"
)

// Exit codes of kmsfs status (and of every command: 1 is an error).
const (
	exitError  = 1
	exitAtRisk = 3
)

// exitCode is an error that makes kmsfs exit with its code after the
// command printed what it had to say.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type statusFlags struct {
	json    bool
	timeout time.Duration
}

func newStatusCmd() *cobra.Command {
	f := &statusFlags{}
	c := &cobra.Command{
		Use:   "status [--json] CIPHERDIR",
		Short: "Show which keys a volume's files depend on, and their state",
		Long: `status reads the header of every file in CIPHERDIR (key IDs are stored in
clear: nothing is unwrapped) and reports, for each key: the files and plaintext
bytes it protects (a file with several stanzas counts under each), the files
it alone opens, and its state from its source: enabled, disabled,
pending-deletion (with the deletion date), missing (a key file or PKCS#11
object gone, an AWS key not found), unavailable, restricted. A passphrase key
is not checked (not-checked). Keys named in headers that kmsfs.conf does not
list are not-in-configuration: this volume cannot open them.

A file is at risk when none of its keys is usable: status lists such files,
then files that are not kmsfs files of this volume (skipped). Symbolic links
and other special entries are never followed or opened.

Exit status:
  0  healthy: every file opens under a usable key
  3  at risk: some file depends only on disabled, pending-deletion, missing,
     unavailable or unconfigured keys
  1  error (no volume, not approved on this host, unreadable cipher dir)`,
		Example: `  kmsfs status /srv/cipher
  kmsfs status --json /srv/cipher | jq '.keys[] | select(.state != "enabled")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			r, err := volume.Status(ctx, args[0], volume.Options{TrustDir: trustDirOf(cmd)})
			if err != nil {
				return err
			}
			if err := report(cmd.OutOrStdout(), f.json, r, func(out io.Writer) { printStatus(out, r) }); err != nil {
				return err
			}
			if !r.Healthy() {
				return exitCode(exitAtRisk)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&f.json, "json", false, "print the report as JSON")
	c.Flags().DurationVar(&f.timeout, "timeout", 30*time.Minute, "bound on the whole scan")
	return c
}

// report writes r to out as indented JSON, or through human.
func report(out io.Writer, asJSON bool, r any, human func(io.Writer)) error {
	if !asJSON {
		human(out)
		return nil
	}
	e := json.NewEncoder(out)
	e.SetIndent("", "  ")
	return e.Encode(r)
}

// printStatus writes the human report: the keys as a table, then the
// files at risk and the foreign entries.
func printStatus(out io.Writer, r *volume.StatusReport) {
	fmt.Fprintf(out, "volume %s in %s: %d files, %s\n\n", r.Volume, r.Dir, r.Files, bytesText(r.Bytes))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tTYPE\tSTATE\tFILES\tBYTES\tALONE\tALONE BYTES")
	for _, k := range r.Keys {
		state := k.State
		if k.Deletes != nil {
			state += " (deleted on " + k.Deletes.Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", k.KeyID, k.Type, state, k.Files, bytesText(k.Bytes), k.SoleFiles, bytesText(k.SoleBytes))
	}
	tw.Flush()
	for _, k := range r.Keys {
		if k.Detail != "" && k.State != volume.StateEnabled {
			fmt.Fprintf(out, "\n%s: %s", k.KeyID, k.Detail)
		}
	}
	fmt.Fprintln(out)
	if r.AtRiskFiles > 0 {
		fmt.Fprintf(out, "\nAT RISK: %d files open under no usable key:\n", r.AtRiskFiles)
		printNotes(out, r.AtRisk, r.AtRiskFiles)
	}
	if r.ForeignFiles > 0 {
		fmt.Fprintf(out, "\n%d files are not kmsfs files of this volume (skipped):\n", r.ForeignFiles)
		printNotes(out, r.Foreign, r.ForeignFiles)
	}
	if r.Skipped > 0 {
		fmt.Fprintf(out, "\n%d symbolic links or special files skipped unopened\n", r.Skipped)
	}
	if r.Healthy() {
		fmt.Fprintln(out, "\nhealthy: every file opens under a usable key")
	}
}

func printNotes(out io.Writer, notes []volume.FileNote, total int64) {
	for _, n := range notes {
		fmt.Fprintf(out, "  %s: %s\n", n.Path, n.Reason)
	}
	if more := total - int64(len(notes)); more > 0 {
		fmt.Fprintf(out, "  … and %d more (--json lists the same first %d)\n", more, len(notes))
	}
}

// bytesText writes n in bytes and, from 1 KiB, in binary units.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/volume"
)

func newInfoCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "info [--json] PATH",
		Short: "Show what a file's header says: format, IDs, slots, keys, sizes",
		Long: `info reads the header of one kmsfs file: format version, file ID, volume ID,
block size, the sequence number of both header slots (the newer one is in
force), the stanzas (type and key ID of each wrapped copy of the data key,
never key material), and the plaintext and cipher sizes.

PATH is a cipher file, or a file seen through a kmsfs mount: info then reads
its cipher file in the mount's cipher dir. No key is needed and nothing is
unwrapped, so the header's MAC is not checked: info says what the file
claims.`,
		Example: `  kmsfs info /srv/cipher/reports/q3.pdf
  kmsfs info /mnt/plain/reports/q3.pdf
  kmsfs info --json /mnt/plain/reports/q3.pdf | jq -r '.stanzas[].key_id'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fi, err := volume.Info(args[0])
			if err != nil {
				return err
			}
			return report(cmd.OutOrStdout(), asJSON, fi, func(out io.Writer) { printInfo(out, fi) })
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the header as JSON")
	return c
}

func printInfo(out io.Writer, fi *volume.FileInfo) {
	fmt.Fprintf(out, "path:           %s\n", fi.Path)
	if fi.CipherPath != fi.Path {
		fmt.Fprintf(out, "cipher file:    %s\n", fi.CipherPath)
	}
	fmt.Fprintf(out, "format version: %d\n", fi.Version)
	fmt.Fprintf(out, "file ID:        %s\n", fi.FileID)
	fmt.Fprintf(out, "volume ID:      %s\n", fi.VolumeID)
	fmt.Fprintf(out, "block size:     %d\n", fi.BlockSize)
	fmt.Fprintf(out, "slot size:      %d\n", fi.SlotSize)
	for i, s := range fi.Slots {
		mark := ""
		if i == fi.Current {
			mark = " (in force)"
		}
		if s.Error != "" {
			fmt.Fprintf(out, "header slot %d:  unreadable: %s\n", i, s.Error)
			continue
		}
		fmt.Fprintf(out, "header slot %d:  sequence %d%s\n", i, s.Seq, mark)
	}
	for i, s := range fi.Stanzas {
		fmt.Fprintf(out, "stanza %d:       %s %s\n", i, s.Type, s.KeyID)
	}
	if fi.SparseRanges > 0 {
		fmt.Fprintf(out, "sparse ranges:  %d\n", fi.SparseRanges)
	}
	fmt.Fprintf(out, "plain size:     %d\n", fi.PlainSize)
	fmt.Fprintf(out, "cipher size:    %d\n", fi.CipherSize)
}

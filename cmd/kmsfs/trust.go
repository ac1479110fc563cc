package main

import (
	"github.com/spf13/cobra"
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

//go:build !mangen

package main

import "github.com/spf13/cobra"

// extraCommands adds no command: the man page generator is built only
// with the mangen tag (`make man`).
func extraCommands() []*cobra.Command { return nil }

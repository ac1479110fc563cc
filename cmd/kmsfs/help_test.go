package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasExamples walks the command tree: every command of
// kmsfs's own has a short description and --help examples that run
// kmsfs itself.
func TestEveryCommandHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Name() == "help" || c.Name() == "completion" || c.Parent() != nil && c.Parent().Name() == "completion" {
			return // cobra's own
		}
		seen++
		if c.Short == "" {
			t.Errorf("kmsfs %s has no short description", c.Name())
		}
		if !strings.Contains(c.Example, "kmsfs ") {
			t.Errorf("kmsfs %s --help has no example running kmsfs: %q", c.Name(), c.Example)
		}
	}
	root := newRootCmd()
	root.InitDefaultCompletionCmd()
	walk(root)
	if seen < 11 {
		t.Errorf("walked %d commands, want every one of kmsfs's (at least 11)", seen)
	}
}

//go:build mangen

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// extraCommands, in a build with the mangen tag (`make man`), adds the
// command that writes the man pages; the kmsfs users run carries neither
// it nor the markdown renderer.
func extraCommands() []*cobra.Command { return []*cobra.Command{newGenManCmd()} }

func newGenManCmd() *cobra.Command {
	var date, format string
	c := &cobra.Command{
		Use:     "gen-man --date YYYY-MM-DD [--format FORMAT.md] DIR",
		Short:   "Write the man pages into DIR",
		Example: "  kmsfs gen-man --date 2026-01-31 --format docs/FORMAT.md out/man",
		Hidden:  true,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The date comes from the caller (the last commit's), never
			// the clock: the same tree makes the same pages.
			d, err := time.Parse(time.DateOnly, date)
			if err != nil {
				return fmt.Errorf("--date: %w", err)
			}
			return genMan(cmd.Root(), args[0], format, d)
		},
	}
	c.Flags().StringVar(&date, "date", "", "the date the pages carry (YYYY-MM-DD)")
	c.Flags().StringVar(&format, "format", "", "docs/FORMAT.md, to write kmsfs-format(5) from")
	c.MarkFlagRequired("date")
	return c
}

// genMan writes kmsfs(1) and a page per command into dir/man1, and
// kmsfs-format(5) from the markdown file format into dir/man5 if given.
func genMan(root *cobra.Command, dir, format string, date time.Time) error {
	var hide func(c *cobra.Command)
	hide = func(c *cobra.Command) {
		c.DisableAutoGenTag = true // its HISTORY line would carry the date
		for _, sub := range c.Commands() {
			hide(sub)
		}
	}
	hide(root)
	man1 := filepath.Join(dir, "man1")
	if err := os.MkdirAll(man1, 0o755); err != nil {
		return err
	}
	header := &doc.GenManHeader{Section: "1", Date: &date, Source: "kmsfs " + root.Version, Manual: "kmsfs manual"}
	if err := doc.GenManTree(root, header, man1); err != nil {
		return err
	}
	if format == "" {
		return nil
	}
	md, err := os.ReadFile(format)
	if err != nil {
		return err
	}
	man5 := filepath.Join(dir, "man5")
	if err := os.MkdirAll(man5, 0o755); err != nil {
		return err
	}
	page := md2man.Render(formatPage(string(md), date, root.Version))
	return os.WriteFile(filepath.Join(man5, "kmsfs-format.5"), page, 0o644)
}

// formatPage turns docs/FORMAT.md into the markdown of a man page: a
// title block and a NAME section in place of its heading, and every
// heading one level up, since a man page's sections are its top level.
func formatPage(md string, date time.Time, version string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%% \"KMSFS-FORMAT\" \"5\" %q \"kmsfs %s\" \"kmsfs manual\"\n", date.Format("Jan 2006"), version)
	b.WriteString("# NAME\nkmsfs-format \\- the kmsfs cipher dir: file headers, blocks, names and journal\n\n# DESCRIPTION\n")
	inCode := false
	for i, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		switch {
		case i == 0 && strings.HasPrefix(line, "# "):
			continue
		case !inCode && strings.HasPrefix(line, "## "):
			line = strings.ToUpper(line[1:])
		case !inCode && strings.HasPrefix(line, "#"):
			line = line[1:]
		}
		b.WriteString(line + "\n")
	}
	b.WriteString("\n# SEE ALSO\n**kmsfs**(1), **kmsfs-init**(1), **kmsfs-fsck**(1)\n")
	return []byte(b.String())
}

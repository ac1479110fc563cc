package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// barInterval bounds how often a progress bar is redrawn: often enough to
// move, rarely enough to cost nothing against the work.
const barInterval = 150 * time.Millisecond

// barWanted reports whether a long command draws a progress bar: only on
// a terminal (stderr) and never beside a --json report.
func barWanted(asJSON bool) bool { return !asJSON && term.IsTerminal(int(os.Stderr.Fd())) }

// newBar returns a bar of a length not known yet, drawn on w and cleared
// when it ends.
func newBar(w io.Writer, desc string, opts ...progressbar.Option) *progressbar.ProgressBar {
	return progressbar.NewOptions64(-1, append([]progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionThrottle(barInterval),
		progressbar.OptionClearOnFinish(),
	}, opts...)...)
}

// endBar takes bar, if any, off the terminal before a report is printed.
func endBar(bar *progressbar.ProgressBar) {
	if bar != nil {
		bar.Finish()
		bar.Clear()
	}
}

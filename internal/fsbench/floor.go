package main

import (
	"fmt"
	"strings"

	"github.com/kmsfs/kmsfs/internal/benchfmt"
	"github.com/kmsfs/kmsfs/internal/fsbench/gcmfloor"
)

// floorSummary sets the daemon CPU that kmsfs spends over the loopback on
// the cold sequential read against the AES-GCM floor: how many times what
// opening the same bytes in process costs.
type floorSummary struct {
	Impl        string    `json:"impl"`
	Reason      string    `json:"reason,omitempty"`
	BlockSize   int       `json:"block_size"`
	RequestSize int       `json:"request_size"`
	PerGiB      []float64 `json:"cpu_seconds_per_gib"` // one per round
	Median      float64   `json:"median_cpu_seconds_per_gib"`
	// ExtraPerGiB is the kmsfs daemon's CPU-s per GiB read minus the
	// loopback's (medians over the rounds); Times is ExtraPerGiB/Median.
	// Both are zero when the sequential read did not run on both.
	ExtraPerGiB float64 `json:"extra_cpu_seconds_per_gib"`
	Times       float64 `json:"extra_over_floor"`
	// Mismatch is set when the kmsfs daemon logged another AES-GCM
	// implementation than the floor was measured with.
	Mismatch string `json:"mismatch,omitempty"`
}

// floorSummary returns the summary of the run's floor measurements, nil if
// there were none.
func (b *bench) floorSummary(rows []row) *floorSummary {
	if len(b.floors) == 0 {
		return nil
	}
	f0 := b.floors[0]
	f := &floorSummary{Impl: f0.Impl, Reason: f0.Reason, BlockSize: f0.BlockSize, RequestSize: f0.RequestSize}
	for _, r := range b.floors {
		f.PerGiB = append(f.PerGiB, r.PerGiB())
	}
	f.Median = benchfmt.Median(f.PerGiB)
	for _, r := range rows {
		if r.Phase == "seq-read-cold" && r.HaveLoop && f.Median > 0 {
			f.ExtraPerGiB = (r.CPUKmsfs - r.CPULoop) * gcmfloor.GiB / float64(b.sizes.seq)
			f.Times = f.ExtraPerGiB / f.Median
		}
	}
	if d := b.meta.KmsfsGCM; d != "" && d != f.Impl {
		f.Mismatch = fmt.Sprintf("the kmsfs daemon logged AES-GCM %s, the floor was measured with %s", d, f.Impl)
	}
	return f
}

// line is the summary's one number, e.g. "seq read, cold: extra daemon CPU
// over the loopback 0.22 s/GiB = 1.6x the AES-GCM floor of 0.14 s/GiB".
func (f *floorSummary) line() string {
	if f.Times == 0 && f.ExtraPerGiB == 0 {
		return fmt.Sprintf("AES-GCM floor: %.3f s/GiB (no sequential read on both filesystems to set against it)", f.Median)
	}
	return fmt.Sprintf("seq read, cold: extra daemon CPU over the loopback %.3f s/GiB = %.1fx the AES-GCM floor of %.3f s/GiB",
		f.ExtraPerGiB, f.Times, f.Median)
}

// how says what the floor is.
func (f *floorSummary) how() string {
	impl := f.Impl
	if f.Reason != "" {
		impl += ", " + f.Reason
	}
	per := make([]string, len(f.PerGiB))
	for i, v := range f.PerGiB {
		per[i] = fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("  floor: CPU time of one thread opening 1 GiB in process (%s, %s requests of %d-byte blocks, in cache),\n"+
		"  the median of one per round (%s); extra CPU: kmsfs's daemon CPU-s minus the loopback's per GiB read",
		impl, human(int64(f.RequestSize)), f.BlockSize, strings.Join(per, ", "))
}

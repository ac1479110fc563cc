package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/benchfmt"
)

// sample is one phase on one filesystem in one round.
type sample struct {
	Group      string             `json:"group"`
	Phase      string             `json:"phase"`
	FS         string             `json:"fs"`
	Round      int                `json:"round"`
	Unit       string             `json:"unit"`
	Value      float64            `json:"value"`
	Seconds    float64            `json:"seconds"`
	CPUSeconds float64            `json:"daemon_cpu_seconds"`
	PeakRSSKiB int64              `json:"daemon_peak_rss_kib"`
	KMSCalls   map[string]int     `json:"kms_calls,omitempty"`
	Detail     map[string]float64 `json:"detail,omitempty"`
}

// daemonRun is what the loopback daemon served over one group run.
type daemonRun struct {
	Group      string `json:"group"`
	FS         string `json:"fs"`
	Round      int    `json:"round"`
	Reads      int64  `json:"reads"`
	ReadBytes  int64  `json:"read_bytes"`
	Writes     int64  `json:"writes"`
	WriteBytes int64  `json:"write_bytes"`
}

// meta describes the run.
type meta struct {
	Started         string   `json:"started"`
	Duration        string   `json:"duration"`
	Kernel          string   `json:"kernel"`
	CPU             string   `json:"cpu"`
	CPUs            int      `json:"cpus"`
	Go              string   `json:"go"`
	Fio             string   `json:"fio"`
	Rounds          int      `json:"rounds"`
	Quick           bool     `json:"quick"`
	Groups          []string `json:"groups,omitempty"`
	MountFlags      []string `json:"kmsfs_mount_flags"`
	KmsfsOptions    string   `json:"kmsfs_mount_options"`
	LoopbackOptions string   `json:"loopback_mount_options"`
	Volume          string   `json:"volume"`
	Tar             string   `json:"tar"`
	Tmpfs           string   `json:"tmpfs"`
	// OtherCPUSeconds is the CPU time that processes other than this
	// program and its children (fio, tar, the daemons) used during the
	// phases' run, out of BusyCPUSeconds in all.
	OtherCPUSeconds float64 `json:"other_cpu_seconds"`
	BusyCPUSeconds  float64 `json:"busy_cpu_seconds"`
	// KmsfsGCM is the AES-GCM implementation the kmsfs daemon logged.
	KmsfsGCM string `json:"kmsfs_gcm"`
}

func newMeta(b *bench) meta {
	m := meta{Started: time.Now().Format(time.RFC3339), CPUs: runtime.NumCPU(), Go: runtime.Version(),
		Rounds: b.cfg.rounds, Quick: b.cfg.quick, Groups: b.cfg.only, MountFlags: b.cfg.mountFlags,
		Tar: b.tarName, Tmpfs: tmpfsSize}
	if m.MountFlags == nil {
		m.MountFlags = []string{}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(raw)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("fio", "--version").Output(); err == nil {
		m.Fio = strings.TrimSpace(string(out))
	}
	o := kfs.MountOptions("", nil, false)
	m.KmsfsOptions = fmt.Sprintf("MaxWrite=%d MaxReadAhead=%d DirectMount=%t EntryTimeout=%v AttrTimeout=%v NegativeTimeout=%v",
		o.MaxWrite, o.MaxReadAhead, o.DirectMount, durOrNil(o.EntryTimeout), durOrNil(o.AttrTimeout), durOrNil(o.NegativeTimeout))
	return m
}

func durOrNil(d *time.Duration) string {
	if d == nil {
		return "default"
	}
	return d.String()
}

// row is one line of the table: medians over the rounds.
type row struct {
	Group    string             `json:"group"`
	Phase    string             `json:"phase"`
	Label    string             `json:"label"`
	Unit     string             `json:"unit"`
	Kmsfs    float64            `json:"kmsfs"`
	Loop     float64            `json:"loopback"`
	Ratio    float64            `json:"ratio"`
	CPUKmsfs float64            `json:"cpu_kmsfs"`
	CPULoop  float64            `json:"cpu_loopback"`
	CPURatio float64            `json:"cpu_ratio"`
	RSSKmsfs float64            `json:"peak_rss_mib_kmsfs"` // the maximum over the rounds
	RSSLoop  float64            `json:"peak_rss_mib_loopback"`
	KMSCalls map[string]float64 `json:"kms_calls"`
	Target   string             `json:"target"`
	Verdict  string             `json:"verdict"`
	HaveLoop bool               `json:"-"`
	// Variant names the kmsfs variant in the kmsfs columns ("names
	// encrypted", "metrics on"), empty for the plain kmsfs; Base is the
	// same phase's median on the plain kmsfs of the same rounds, and
	// VsBase this row's median over it.
	Variant string  `json:"variant,omitempty"`
	Base    float64 `json:"base,omitempty"`
	VsBase  float64 `json:"vs_base,omitempty"`
	// Noise is the relative spread of the plain kmsfs over the rounds
	// (at least noiseMin), the band a metrics-on row is judged in.
	Noise   float64 `json:"noise_band,omitempty"`
	names   bool    // a variant with encrypted names
	metrics bool    // a variant with metrics on
}

// pick returns the samples of one phase on one filesystem.
func (b *bench) pick(group, phase, fs string) []sample {
	var out []sample
	for _, s := range b.samples {
		if s.Group == group && s.Phase == phase && s.FS == fs {
			out = append(out, s)
		}
	}
	return out
}

func (b *bench) rows(groups []group) []row {
	var rows []row
	for _, g := range groups {
		for _, p := range g.phases {
			plain := b.row(g, p, fsKmsfs)
			rows = append(rows, plain)
			for _, v := range g.variants {
				r := b.row(g, p, v.fs)
				r.Base = plain.Kmsfs
				if plain.Kmsfs > 0 {
					r.VsBase = r.Kmsfs / plain.Kmsfs
				}
				r.Noise = spread(b.pick(g.name, p.key, fsKmsfs))
				r.Target, r.Verdict = judge(g, p, r)
				rows = append(rows, r)
			}
		}
	}
	return rows
}

// row returns the row of phase p of group g with kmsfs (fs: fsKmsfs or
// one of g's variants) against the loopback.
func (b *bench) row(g group, p phase, fs string) row {
	k := b.pick(g.name, p.key, fs)
	l := b.pick(g.name, p.key, fsLoop)
	r := row{Group: g.name, Phase: p.key, Label: p.label, Unit: p.unit, KMSCalls: map[string]float64{}, HaveLoop: len(l) > 0}
	if v, ok := g.variant(fs); ok {
		r.Phase += v.suffix
		r.Label += ", " + v.label
		r.Variant = v.label
		r.names, r.metrics = v.encryptedNames, v.scrape
	}
	r.Kmsfs, r.CPUKmsfs, r.RSSKmsfs = stats(k)
	r.Loop, r.CPULoop, r.RSSLoop = stats(l)
	if r.HaveLoop && r.Loop > 0 {
		r.Ratio = r.Kmsfs / r.Loop
	}
	if r.HaveLoop && r.CPULoop > 0 {
		r.CPURatio = r.CPUKmsfs / r.CPULoop
	}
	for _, op := range kmsOps {
		var xs []float64
		for _, s := range k {
			xs = append(xs, float64(s.KMSCalls[op]))
		}
		if v := benchfmt.Median(xs); v > 0 {
			r.KMSCalls[op] = v
		}
	}
	r.Target, r.Verdict = judge(g, p, r)
	return r
}

// stats returns the median value, the median CPU seconds and the largest
// peak RSS in MiB of samples.
func stats(ss []sample) (value, cpu, rssMiB float64) {
	var vs, cs []float64
	for _, s := range ss {
		vs = append(vs, s.Value)
		cs = append(cs, s.CPUSeconds)
		rssMiB = max(rssMiB, float64(s.PeakRSSKiB)/1024)
	}
	return benchfmt.Median(vs), benchfmt.Median(cs), rssMiB
}

// spread returns the relative spread of samples' values, (max-min) over
// the median, and at least noiseMin: what one configuration moves by
// between the rounds of this run.
func spread(ss []sample) float64 {
	if len(ss) == 0 {
		return noiseMin
	}
	var vs []float64
	lo, hi := ss[0].Value, ss[0].Value
	for _, s := range ss {
		vs = append(vs, s.Value)
		lo, hi = min(lo, s.Value), max(hi, s.Value)
	}
	med := benchfmt.Median(vs)
	if med <= 0 {
		return noiseMin
	}
	return max(noiseMin, (hi-lo)/med)
}

// Targets, as ratios kmsfs/loopback: what kmsfs should hold against a
// daemon that moves the same bytes without encrypting them.
const (
	seqMin      = 0.85 // sequential throughput
	randMin     = 1.0  // random IOPS
	metaMax     = 0.9  // metadata-heavy time, no KMS latency
	metaSlowMax = 1.1  // metadata-heavy time, the KMS kmsLatency away
	readCPUMax  = 1.3  // daemon CPU of the cold sequential read
	untarRSSMax = 150  // MiB, kmsfs daemon's peak RSS during untar
	// namesMax bounds the time of a phase with encrypted names against
	// the same phase with names in the clear, in the same rounds.
	namesMax = 1.1
	// noiseMin is the narrowest noise band a metrics-on row is judged
	// in: three rounds can agree closely by chance.
	noiseMin = 0.05
)

// judge returns the row's acceptance target and whether it holds.
func judge(g group, p phase, r row) (string, string) {
	var targets, misses []string
	check := func(target string, ok bool) {
		targets = append(targets, target)
		if !ok {
			misses = append(misses, target)
		}
	}
	switch {
	case r.names:
		check(fmt.Sprintf("names<=%.1f", namesMax), r.VsBase <= namesMax)
	case r.metrics && p.unit == unitSec:
		// Only a cost is flagged: metrics on ahead of off is noise too.
		check(fmt.Sprintf("metrics<=%.2f", 1+r.Noise), r.VsBase <= 1+r.Noise)
	case r.metrics:
		check(fmt.Sprintf("metrics>=%.2f", 1-r.Noise), r.VsBase >= 1-r.Noise)
	case strings.HasPrefix(p.key, "seq-"):
		check(fmt.Sprintf(">=%.2f", seqMin), r.Ratio >= seqMin)
		if p.key == "seq-read-cold" {
			check(fmt.Sprintf("cpu<=%.1f", readCPUMax), r.CPURatio <= readCPUMax)
		}
	case strings.HasPrefix(p.key, "rand"):
		check(fmt.Sprintf(">=%.1f", randMin), r.Ratio >= randMin)
	case g.slowKMS:
		check(fmt.Sprintf("<=%.1f", metaSlowMax), r.Ratio <= metaSlowMax)
	default:
		check(fmt.Sprintf("<=%.1f", metaMax), r.Ratio <= metaMax)
	}
	if strings.HasPrefix(p.key, "untar") {
		check(fmt.Sprintf("rss<=%d", untarRSSMax), r.RSSKmsfs <= untarRSSMax)
	}
	target := strings.Join(targets, " ")
	switch {
	case r.Variant != "" && r.Base == 0, r.Variant == "" && !r.HaveLoop:
		return target, "-"
	case len(misses) > 0:
		return target, "MISS " + strings.Join(misses, " ")
	}
	return target, "ok"
}

// opAbbrev shortens KMS operation names in the table.
var opAbbrev = map[string]string{
	"GenerateDataKey": "GDK", "GenerateDataKeyWithoutPlaintext": "GDKnp", "Decrypt": "Dec",
	"Encrypt": "Enc", "ReEncrypt": "ReEnc", "DescribeKey": "Desc", "GetPublicKey": "GetPub",
}

func kmsCell(calls map[string]float64) string {
	var parts []string
	for _, op := range kmsOps {
		if v, ok := calls[op]; ok {
			parts = append(parts, fmt.Sprintf("%s %g", opAbbrev[op], v))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

func valueCell(unit string, v float64) string {
	if unit == unitSec {
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// table renders the rows with a header and notes.
func (b *bench) table(rows []row) string {
	var w bytes.Buffer
	m := b.meta
	fmt.Fprintf(&w, "kmsfs vs go-fuse loopback, %s, took %s\n", m.Started, m.Duration)
	fmt.Fprintf(&w, "host: kernel %s, %d x %s, %s, %s; other processes used %.0f CPU-s of the %.0f CPU-s busy during the run\n",
		m.Kernel, m.CPUs, m.CPU, m.Go, m.Fio, m.OtherCPUSeconds, m.BusyCPUSeconds)
	if m.OtherCPUSeconds > 0.05*m.BusyCPUSeconds {
		fmt.Fprintln(&w, "NOTE: other processes competed for the CPUs during the run: the numbers are noisy")
	}
	fmt.Fprintf(&w, "runs: %d rounds (medians; peak RSS: the largest), kmsfs, its variants and loopback in an order rotated by round, fresh mount and backing dir per group and round, backing dirs on tmpfs (%s)", m.Rounds, m.Tmpfs)
	if m.Quick {
		fmt.Fprint(&w, ", BENCH_QUICK=1 (reduced sizes)")
	}
	fmt.Fprintln(&w)
	flags := "(KMSFS_MOUNT_FLAGS empty)"
	if len(m.MountFlags) > 0 {
		flags = strings.Join(m.MountFlags, " ")
	}
	fmt.Fprintf(&w, "kmsfs:    kmsfs mount -f %s; %s; volume %s\n", flags, m.KmsfsOptions, m.Volume)
	fmt.Fprintf(&w, "loopback: internal/loopbackfs (fs.NewLoopbackRoot, go-fuse v2.12.1); %s\n", m.LoopbackOptions)
	if m.KmsfsOptions+" passthrough=off" != m.LoopbackOptions && m.LoopbackOptions != "" {
		fmt.Fprintln(&w, "NOTE: kmsfs's mount options differ from the loopback's: the comparison is not like for like")
	}
	fmt.Fprintln(&w)

	header := []string{"phase", "unit", "kmsfs", "loopback", "ratio", "vs off", "target", "verdict", "cpu-s kmsfs", "cpu-s loop", "cpu ratio", "rss MiB kmsfs", "rss MiB loop", "KMS calls (kmsfs)"}
	cells := [][]string{header}
	for _, r := range rows {
		loop, ratio, cpuLoop, cpuRatio, rssLoop := "-", "-", "-", "-", "-"
		if r.HaveLoop {
			loop = valueCell(r.Unit, r.Loop)
			ratio = fmt.Sprintf("%.2f", r.Ratio)
			cpuLoop = fmt.Sprintf("%.2f", r.CPULoop)
			if r.CPULoop > 0 {
				cpuRatio = fmt.Sprintf("%.2f", r.CPURatio)
			}
			rssLoop = fmt.Sprintf("%.0f", r.RSSLoop)
		}
		vs := "-"
		if r.Variant != "" && r.Base > 0 {
			vs = fmt.Sprintf("%.2f", r.VsBase)
		}
		cells = append(cells, []string{r.Label, r.Unit, valueCell(r.Unit, r.Kmsfs), loop, ratio, vs, r.Target, r.Verdict,
			fmt.Sprintf("%.2f", r.CPUKmsfs), cpuLoop, cpuRatio, fmt.Sprintf("%.0f", r.RSSKmsfs), rssLoop, kmsCell(r.KMSCalls)})
	}
	writeAligned(&w, cells)
	fmt.Fprintln(&w)
	if f := b.floorSummary(rows); f != nil {
		fmt.Fprintln(&w, f.line())
		fmt.Fprintln(&w, f.how())
		if f.Mismatch != "" {
			fmt.Fprintln(&w, "NOTE: "+f.Mismatch)
		}
		fmt.Fprintln(&w)
	}
	b.notes(&w)
	return w.String()
}

// writeAligned writes cells as columns: the first, the target, the
// verdict and the last left aligned, the others right aligned.
func writeAligned(w io.Writer, cells [][]string) {
	widths := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	for n, row := range cells {
		var line strings.Builder
		for i, c := range row {
			if i > 0 {
				line.WriteString("  ")
			}
			switch i {
			case 0, 6, 7, len(row) - 1:
				fmt.Fprintf(&line, "%-*s", widths[i], c)
			default:
				fmt.Fprintf(&line, "%*s", widths[i], c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
		if n == 0 {
			total := len(widths)*2 - 2
			for _, x := range widths {
				total += x
			}
			fmt.Fprintln(w, strings.Repeat("-", total))
		}
	}
}

// notes explains the table and shows how the cold reads were ensured.
func (b *bench) notes(w io.Writer) {
	fmt.Fprintln(w, "ratio = kmsfs / loopback in the row's unit: for MB/s and IOPS higher is better, for s lower is better;")
	fmt.Fprintln(w, "  targets are what kmsfs should hold (docs/PERFORMANCE.md); cpu-s = daemon utime+stime during the phase (/proc/PID/stat),")
	fmt.Fprintln(w, "  rss = daemon VmHWM during the phase (reset with clear_refs=5 before it).")
	fmt.Fprintln(w, "cold phases: `sync; echo 3 > /proc/sys/vm/drop_caches` before the phase (tmpfs pages stay, the FUSE page cache,")
	fmt.Fprintln(w, "  dentries and inodes go), and fio --invalidate=1 drops the file's cached pages again when it opens it;")
	fmt.Fprintln(w, "  fio's random map reads each 4K block once per pass with read-ahead off (fadvise RANDOM).")
	for _, line := range b.loopEvidence() {
		fmt.Fprintln(w, "  "+line)
	}
	fmt.Fprintln(w, "KMS: local-kms on 127.0.0.1 (AWS KMS symmetric key) behind a counting proxy that adds no latency, or 10 ms per")
	fmt.Fprintln(w, "  request in the \"KMS +10ms\" rows (a fresh volume initialised through it); their loopback column is the loopback")
	fmt.Fprintln(w, "  (which uses no KMS) measured again in the same rounds, so that both sides see the same host. KMS calls: median")
	fmt.Fprintln(w, "  requests per phase (GDK GenerateDataKey, Dec Decrypt, Desc DescribeKey).")
	fmt.Fprintf(w, "untar: %s, tarred once onto the tmpfs; find/du counts checked against the tar.\n", b.tarName)
	fmt.Fprintln(w, "variants: rows \"…, names encrypted\" and \"…, metrics on\" are kmsfs variants run in the same rounds as the plain")
	fmt.Fprintln(w, "  kmsfs and the loopback, in an order rotated by round (kmsfs, variant, loopback; then variant, loopback, kmsfs; ...);")
	fmt.Fprintln(w, "  vs off = the row's median / the plain kmsfs median of the same phase (the first row of the phase).")
	fmt.Fprintln(w, "  names encrypted: a volume made by `kmsfs init` (the default); every other kmsfs column is a volume made with")
	fmt.Fprintln(w, "  `kmsfs init --plaintext-names`; target: vs off at most 1.1.")
	fmt.Fprintln(w, "  metrics on: the plain kmsfs's volume and flags plus `--metrics-listen 127.0.0.1:0`; target: no cost beyond the")
	fmt.Fprintf(w, "  noise, the relative spread (max-min)/median of the plain kmsfs over this run's rounds, at least %.0f%%: a ratio\n", 100*noiseMin)
	fmt.Fprintln(w, "  within what one configuration moves by between rounds cannot be told from noise. Only the costly side is flagged.")
	if line := b.scrapeSummary(); line != "" {
		fmt.Fprintln(w, "  "+line)
	}
}

// scrapeSummary says what the metrics-on daemons' endpoints answered.
func (b *bench) scrapeSummary() string {
	if len(b.scrapes) == 0 {
		return ""
	}
	lo, hi := b.scrapes[0].Series, b.scrapes[0].Series
	for _, sc := range b.scrapes {
		lo, hi = min(lo, sc.Series), max(hi, sc.Series)
	}
	return fmt.Sprintf("metrics endpoint scraped at the end of each of the %d metrics-on rounds: %d to %d kmsfs_ series each.", len(b.scrapes), lo, hi)
}

// loopEvidence compares what fio asked for with what the loopback daemon
// says it served: reads that the page cache answered would be missing.
func (b *bench) loopEvidence() []string {
	var lines []string
	for _, d := range b.daemons {
		var want float64
		var what string
		var got int64
		switch d.Group {
		case "seq":
			for _, s := range b.pick("seq", "seq-read-cold", fsLoop) {
				if s.Round == d.Round {
					want = s.Detail["io_bytes"]
				}
			}
			what, got = "bytes read", d.ReadBytes
		case "rand":
			for _, p := range []string{"randread-1", "randread-4"} {
				for _, s := range b.pick("rand", p, fsLoop) {
					if s.Round == d.Round {
						want += s.Detail["ios"]
					}
				}
			}
			what, got = "4K reads", d.Reads
		default:
			continue
		}
		if want > 0 && d.Round == 1 {
			lines = append(lines, fmt.Sprintf("check, loopback round 1, %s: fio %s %.0f, the daemon served %d (%.0f%%)",
				d.Group, what, want, got, 100*float64(got)/want))
		}
	}
	return lines
}

// report prints the table and writes it and the raw samples under out/.
func (b *bench) report(groups []group) error {
	rows := b.rows(groups)
	t := b.table(rows)
	fmt.Print(t)
	if err := os.MkdirAll(b.cfg.outDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.cfg.outDir, "bench-fs-table.txt"), []byte(t), 0o644); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(struct {
		Meta    meta          `json:"meta"`
		Rows    []row         `json:"rows"`
		Floor   *floorSummary `json:"gcm_floor,omitempty"`
		Samples []sample      `json:"samples"`
		Daemons []daemonRun   `json:"loopback_served"`
		Scrapes []scrape      `json:"metrics_scrapes,omitempty"`
	}{b.meta, rows, b.floorSummary(rows), b.samples, b.daemons, b.scrapes}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.cfg.outDir, "bench-fs.json"), append(raw, '\n'), 0o644)
}

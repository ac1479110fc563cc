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
	// Names marks a row of kmsfs with encrypted names (fsKmsfsNames in
	// the kmsfs columns); NamesOff is the same phase's median on kmsfs
	// with names in the clear, and NamesRatio this row's median over it.
	Names      bool    `json:"names_encrypted"`
	NamesOff   float64 `json:"names_off,omitempty"`
	NamesRatio float64 `json:"names_ratio,omitempty"`
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
			if !g.names {
				continue
			}
			r := b.row(g, p, fsKmsfsNames)
			if plain.Kmsfs > 0 {
				r.NamesRatio = r.Kmsfs / plain.Kmsfs
			}
			r.NamesOff = plain.Kmsfs
			r.Target, r.Verdict = judge(g, p, r)
			rows = append(rows, r)
		}
	}
	return rows
}

// row returns the row of phase p of group g with kmsfs (fs: fsKmsfs or
// fsKmsfsNames) against the loopback.
func (b *bench) row(g group, p phase, fs string) row {
	k := b.pick(g.name, p.key, fs)
	l := b.pick(g.name, p.key, fsLoop)
	r := row{Group: g.name, Phase: p.key, Label: p.label, Unit: p.unit, KMSCalls: map[string]float64{}, HaveLoop: len(l) > 0}
	if fs == fsKmsfsNames {
		r.Phase += "-names"
		r.Label += ", names encrypted"
		r.Names = true
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
	case r.Names:
		check(fmt.Sprintf("names<=%.1f", namesMax), r.NamesRatio <= namesMax)
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
	case r.Names && r.NamesOff == 0, !r.Names && !r.HaveLoop:
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
	fmt.Fprintf(&w, "runs: %d rounds (medians; peak RSS: the largest), kmsfs and loopback alternating (loopback first in even rounds), fresh mount and backing dir per group and round, backing dirs on tmpfs (%s)", m.Rounds, m.Tmpfs)
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

	header := []string{"phase", "unit", "kmsfs", "loopback", "ratio", "vs names-off", "target", "verdict", "cpu-s kmsfs", "cpu-s loop", "cpu ratio", "rss MiB kmsfs", "rss MiB loop", "KMS calls (kmsfs)"}
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
		names := "-"
		if r.Names && r.NamesOff > 0 {
			names = fmt.Sprintf("%.2f", r.NamesRatio)
		}
		cells = append(cells, []string{r.Label, r.Unit, valueCell(r.Unit, r.Kmsfs), loop, ratio, names, r.Target, r.Verdict,
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
	fmt.Fprintln(w, "names encrypted: the kmsfs columns of those rows are kmsfs on a volume made by `kmsfs init` (names encrypted,")
	fmt.Fprintln(w, "  the default); every other kmsfs column is a volume made with `kmsfs init --plaintext-names`. The names rows are")
	fmt.Fprintln(w, "  run in the same rounds between kmsfs and the loopback (kmsfs, names, loopback; reversed in even rounds);")
	fmt.Fprintln(w, "  vs names-off = its median / the median of the row above it (kmsfs, names in the clear), lower is better.")
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
	}{b.meta, rows, b.floorSummary(rows), b.samples, b.daemons}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.cfg.outDir, "bench-fs.json"), append(raw, '\n'), 0o644)
}

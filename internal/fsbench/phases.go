package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Units of a phase's value.
const (
	unitMBps = "MB/s" // 10^6 bytes per second, higher is better
	unitIOPS = "IOPS" // higher is better
	unitSec  = "s"    // wall time, lower is better
)

// fioLimit bounds one fio run: far above any phase on a working mount.
const fioLimit = 10 * time.Minute

// phase is one measured step of a group.
type phase struct {
	key   string // stable name in the JSON output
	label string // row label in the table
	unit  string
	drop  bool // drop the kernel caches first (a cold phase)
	// restart the daemon first (not measured): it then holds no data
	// keys either, so kmsfs unwraps them through the key service.
	restart bool
	// run does the work in dir (inside the mount). For unitSec phases
	// the value is the wall time of run and the returned value is
	// ignored.
	run func(ctx context.Context, r *groupRun) (value float64, detail map[string]float64, err error)
}

// group is a sequence of phases run on one fresh mount per filesystem
// and round; setup (not measured) prepares the mount first.
type group struct {
	name    string
	setup   func(ctx context.Context, r *groupRun) error
	phases  []phase
	slowKMS bool // kmsfs's volume behind the slow proxy (the loopback runs as in the plain group)
	// floor: after each round, measure the AES-GCM floor in process
	// (gcmfloor), to set against the daemon CPU of the group's reads.
	floor bool
	// variants are the other kmsfs configurations run in the same
	// rounds as the plain kmsfs, each set against it row by row: a
	// difference between runs of different rounds would be the host's.
	variants []variant
}

// variant is a kmsfs configuration that differs from the plain kmsfs
// column (names in the clear, no metrics) in one thing only.
type variant struct {
	fs     string // its name in the samples and its mount point
	suffix string // appended to the phase keys of its rows
	label  string // appended to the labels of its rows
	base   string // what the plain kmsfs is to it, in the table: "names-off"
	// encryptedNames: its volume is made by `kmsfs init` without
	// --plaintext-names.
	encryptedNames bool
	// flags are added to its `kmsfs mount` flags.
	flags []string
	// scrape: at the end of each round, the metrics endpoint must answer
	// with kmsfs series, or the rows measured a mount without metrics.
	scrape bool
}

// namesOn is kmsfs on a volume with encrypted names (the default of
// `kmsfs init`).
func namesOn() variant {
	return variant{fs: fsKmsfsNames, suffix: "-names", label: "names encrypted", base: "names-off", encryptedNames: true}
}

// metricsOn is kmsfs serving its metrics endpoint, on the same kind of
// volume as the plain kmsfs. Port 0: rounds never race for a port, and the
// daemon logs the address it got.
func metricsOn() variant {
	return variant{fs: fsKmsfsMetrics, suffix: "-metrics", label: "metrics on", base: "metrics-off",
		flags: []string{"--metrics-listen", "127.0.0.1:0"}, scrape: true}
}

// variant returns the variant of g that runs as fs, if any.
func (g group) variant(fs string) (variant, bool) {
	for _, v := range g.variants {
		if v.fs == fs {
			return v, true
		}
	}
	return variant{}, false
}

// filesystems returns what runs in each round of g: the plain kmsfs, its
// variants, then the loopback.
func (g group) filesystems() []string {
	fss := []string{fsKmsfs}
	for _, v := range g.variants {
		fss = append(fss, v.fs)
	}
	return append(fss, fsLoop)
}

// roundOrder returns the order in which fss run in round (from 1): fss
// rotated by one place per round, so that over len(fss) rounds each runs
// once in each position. The first run after a pause finds colder caches
// and memory, the last one a host that warmed up.
func roundOrder(fss []string, round int) []string {
	k := (round - 1) % len(fss)
	return append(slices.Clone(fss[k:]), fss[:k]...)
}

// groupRun is one run of a group on one filesystem.
type groupRun struct {
	b     *bench
	fs    string // fsKmsfs, a variant's fs or fsLoop
	round int
	dir   string // the mount point
}

// groups returns every group in the order they run.
func (b *bench) groups() []group {
	s := b.sizes
	seq := group{name: "seq", setup: b.prefault, floor: true, variants: []variant{metricsOn()}, phases: []phase{
		{key: "seq-write", label: fmt.Sprintf("seq write %s bs=1M", human(s.seq)), unit: unitMBps, run: b.seqWrite},
		{key: "seq-read-cold", label: fmt.Sprintf("seq read %s bs=1M, cold", human(s.seq)), unit: unitMBps, drop: true, run: b.seqRead},
	}}
	rand := group{name: "rand", setup: b.randLayout, variants: []variant{metricsOn()}, phases: []phase{
		{key: "randread-1", label: "rand read 4K, 1 job, cold", unit: unitIOPS, drop: true, run: b.randIO("randread", 1)},
		{key: "randread-4", label: "rand read 4K, 4 jobs, cold", unit: unitIOPS, drop: true, run: b.randIO("randread", 4)},
		{key: "randwrite-1", label: "rand write 4K, 1 job", unit: unitIOPS, drop: true, run: b.randIO("randwrite", 1)},
		{key: "randwrite-4", label: "rand write 4K, 4 jobs", unit: unitIOPS, drop: true, run: b.randIO("randwrite", 4)},
	}}
	n := s.smallDirs * s.smallPerDir
	small := []phase{
		{key: "small-create", label: fmt.Sprintf("create %d x 4K files", n), unit: unitSec, run: b.smallCreate},
		{key: "small-read-cold", label: fmt.Sprintf("read %d files, cold (remounted)", n), unit: unitSec, drop: true, restart: true, run: b.smallRead},
		{key: "small-remove", label: fmt.Sprintf("remove %d files", n), unit: unitSec, run: b.smallRemove},
	}
	untar := []phase{
		{key: "untar", label: "untar " + b.tarName, unit: unitSec, run: b.untar},
		{key: "find", label: "find | wc -l, cold", unit: unitSec, drop: true, run: b.find},
		{key: "du", label: "du -s, cold", unit: unitSec, drop: true, run: b.du},
		{key: "rm-rf", label: "rm -rf", unit: unitSec, run: b.rmrf},
	}
	return []group{
		seq, rand,
		{name: "small", phases: small, variants: []variant{metricsOn()}},
		{name: "untar", phases: untar, variants: []variant{namesOn()}},
		{name: "small-kms10ms", phases: withSlowKMS(small), slowKMS: true},
		{name: "untar-kms10ms", phases: withSlowKMS(untar), slowKMS: true},
	}
}

func withSlowKMS(ps []phase) []phase {
	out := make([]phase, len(ps))
	for i, p := range ps {
		p.key += "-kms10ms"
		p.label += ", KMS +10ms"
		out[i] = p
	}
	return out
}

// human renders a byte count as "1 GiB" or "128 MiB".
func human(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// prefault writes and removes a file of twice the sequential size plus
// an eighth on the tmpfs, so that the run's write finds the memory for the
// backing file and for the mount's page cache already backed. This VM
// returns freed guest pages to its host (free page reporting), and the
// first write to such a page costs a host fault: without this, whichever
// filesystem writes first after a pause is measured far below its speed.
func (b *bench) prefault(ctx context.Context, r *groupRun) error {
	p := filepath.Join(b.tmpfs, "prefault")
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer os.Remove(p)
	buf := bytes.Repeat([]byte{1}, 1<<20)
	for n := int64(0); n < 2*b.sizes.seq+b.sizes.seq/8 && err == nil; n += int64(len(buf)) {
		if err = ctx.Err(); err == nil {
			_, err = f.Write(buf)
		}
	}
	return errors.Join(err, f.Close())
}

func (b *bench) seqWrite(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	_, w, err := runFio(ctx, b.work, "--name=seqwrite", "--filename="+filepath.Join(r.dir, "seq.dat"),
		"--rw=write", "--bs=1M", "--size="+strconv.FormatInt(b.sizes.seq, 10), "--end_fsync=1")
	if err != nil {
		return 0, nil, err
	}
	return w.BWBytes / 1e6, w.detail(), nil
}

func (b *bench) seqRead(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	rd, _, err := runFio(ctx, b.work, "--name=seqread", "--filename="+filepath.Join(r.dir, "seq.dat"),
		"--rw=read", "--bs=1M", "--size="+strconv.FormatInt(b.sizes.seq, 10))
	if err != nil {
		return 0, nil, err
	}
	if rd.IOBytes != b.sizes.seq {
		return 0, nil, fmt.Errorf("fio read %d bytes, want %d", rd.IOBytes, b.sizes.seq)
	}
	return rd.BWBytes / 1e6, rd.detail(), nil
}

// randFiles names the random-I/O files: fio job clone k uses rand.k.
func randFiles(dir string) []string {
	return []string{"--directory=" + dir, "--filename_format=rand.$jobnum"}
}

// randLayout writes the four files the random phases use (job 0 alone
// uses rand.0).
func (b *bench) randLayout(ctx context.Context, r *groupRun) error {
	args := append(randFiles(r.dir), "--name=layout", "--rw=write", "--bs=1M",
		"--size="+strconv.FormatInt(b.sizes.rand, 10), "--numjobs=4", "--end_fsync=1")
	_, w, err := runFio(ctx, b.work, args...)
	if err == nil && w.IOBytes != 4*b.sizes.rand {
		err = fmt.Errorf("layout wrote %d bytes, want %d", w.IOBytes, 4*b.sizes.rand)
	}
	return err
}

// randIO returns a phase running fio's rw (randread or randwrite) with 4
// KiB blocks and jobs jobs, each on its own laid-out file, for the
// configured time. fio's random map makes every pass over a file touch
// each block once, and on a read fio advises the kernel of random access
// (no read-ahead).
func (b *bench) randIO(rw string, jobs int) func(context.Context, *groupRun) (float64, map[string]float64, error) {
	return func(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
		args := append(randFiles(r.dir), "--name="+rw, "--rw="+rw, "--bs=4k",
			"--size="+strconv.FormatInt(b.sizes.rand, 10), "--numjobs="+strconv.Itoa(jobs),
			"--time_based", "--runtime="+strconv.Itoa(int(b.sizes.randTime/time.Second)))
		if rw == "randwrite" {
			args = append(args, "--end_fsync=1")
		}
		rd, w, err := runFio(ctx, b.work, args...)
		if err != nil {
			return 0, nil, err
		}
		st := rd
		if rw == "randwrite" {
			st = w
		}
		if st.TotalIOs == 0 {
			return 0, nil, fmt.Errorf("fio %s did no I/O", rw)
		}
		return st.IOPS, st.detail(), nil
	}
}

// smallSize is the size of every file of the small-file phases.
const smallSize = 4096

// smallContent returns file i's content: a fixed random block with i in
// its first 8 bytes, so a read checks it got its own file.
func (b *bench) smallContent(i int) []byte {
	buf := bytes.Clone(b.smallBlock)
	binary.LittleEndian.PutUint64(buf, uint64(i))
	return buf
}

// eachSmall calls fn with the path and number of every small file under
// dir, small/dDD/fFFF, a directory's files in a row; it checks ctx before
// each directory.
func (b *bench) eachSmall(ctx context.Context, dir string, fn func(path string, i int) error) error {
	for d := range b.sizes.smallDirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		for f := range b.sizes.smallPerDir {
			p := filepath.Join(dir, "small", fmt.Sprintf("d%02d", d), fmt.Sprintf("f%03d", f))
			if err := fn(p, d*b.sizes.smallPerDir+f); err != nil {
				return err
			}
		}
	}
	return nil
}

// smallCreate writes smallDirs directories of smallPerDir files, in this
// process so that no process start-up is measured.
func (b *bench) smallCreate(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	if err := os.Mkdir(filepath.Join(r.dir, "small"), 0o755); err != nil {
		return 0, nil, err
	}
	return 0, nil, b.eachSmall(ctx, r.dir, func(p string, i int) error {
		if i%b.sizes.smallPerDir == 0 { // a directory's first file
			if err := os.Mkdir(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
		return os.WriteFile(p, b.smallContent(i), 0o644)
	})
}

// smallRead reads every small file back and checks its content.
func (b *bench) smallRead(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	return 0, nil, b.eachSmall(ctx, r.dir, func(p string, i int) error {
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, b.smallContent(i)) {
			return fmt.Errorf("%s: wrong content (%d bytes)", p, len(got))
		}
		return nil
	})
}

// smallRemove removes every small file by name, each directory after its
// last file, then small itself.
func (b *bench) smallRemove(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	err := b.eachSmall(ctx, r.dir, func(p string, i int) error {
		if err := os.Remove(p); err != nil {
			return err
		}
		if (i+1)%b.sizes.smallPerDir == 0 { // a directory's last file
			return os.Remove(filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return 0, nil, os.Remove(filepath.Join(r.dir, "small"))
}

// shell runs a command line with bash in dir, bounded by ctx and fioLimit,
// and returns its standard output.
func shell(ctx context.Context, dir, line string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, fioLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", line)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", line, err, stderr.Bytes())
	}
	return string(out), nil
}

func (b *bench) untar(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	dir := filepath.Join(r.dir, "untar")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, nil, err
	}
	_, err := shell(ctx, dir, "tar -xf "+shellQuote(b.tarPath))
	return 0, nil, err
}

func (b *bench) find(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	out, err := shell(ctx, filepath.Join(r.dir, "untar"), "find . | wc -l")
	if err != nil {
		return 0, nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, nil, fmt.Errorf("find | wc -l: %q", out)
	}
	if n != b.tarEntries+1 { // find lists "." too
		return 0, nil, fmt.Errorf("find listed %d names, the tar holds %d entries (+1 for .)", n, b.tarEntries)
	}
	return 0, map[string]float64{"names": float64(n)}, nil
}

func (b *bench) du(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	out, err := shell(ctx, filepath.Join(r.dir, "untar"), "du -s .")
	if err != nil {
		return 0, nil, err
	}
	kib, _ := strconv.ParseFloat(strings.Fields(out + " 0")[0], 64)
	return 0, map[string]float64{"du_kib": kib}, nil
}

func (b *bench) rmrf(ctx context.Context, r *groupRun) (float64, map[string]float64, error) {
	dir := filepath.Join(r.dir, "untar")
	if _, err := shell(ctx, r.dir, "rm -rf "+shellQuote(dir)); err != nil {
		return 0, nil, err
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		return 0, nil, fmt.Errorf("rm -rf left %s behind (%v)", dir, err)
	}
	return 0, nil, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// newSmallBlock returns the random base content of the small files.
func newSmallBlock() []byte {
	buf := make([]byte, smallSize)
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], rand.Uint64())
	}
	return buf
}

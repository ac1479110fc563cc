package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/internal/fsbench/gcmfloor"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

// kmsOps are the KMS operations counted at the proxies.
var kmsOps = []string{"GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Decrypt", "Encrypt", "ReEncrypt", "DescribeKey", "GetPublicKey"}

// bench is one benchmark run: its work dir, tmpfs, KMS and samples.
type bench struct {
	cfg   *config
	sizes sizes

	work  string // private work dir on disk: mount points, logs, fio reports
	tmpfs string // <work>/tmpfs: backing dirs and the tar

	tarPath    string // on the tmpfs: drop_caches does not evict it
	tarName    string // "Go src (12801 entries)"
	tarEntries int

	smallBlock []byte

	h      *harness
	kms    *kmstest.Emulator
	direct *kmstest.Proxy // no added latency: counts the KMS calls
	slow   *kmstest.Proxy // kmsLatency added to every request

	meta      meta
	samples   []sample
	daemons   []daemonRun
	blockSize int               // the kmsfs volumes' block size
	floors    []gcmfloor.Result // the AES-GCM floor, once per round of a group that asks for it
	scrapes   []scrape          // one per round of a variant with metrics on
}

func newBench(cfg *config) (*bench, error) {
	s := fullSizes
	if cfg.quick {
		s = quickSizes
	}
	work, err := os.MkdirTemp("", "kmsfs-fsbench-")
	if err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg, sizes: s, work: work, tmpfs: filepath.Join(work, "tmpfs"), smallBlock: newSmallBlock()}
	b.h = newHarness(work, os.Stderr)
	return b, nil
}

// close tears down what prepare set up, last first: the emulator and its
// proxies, the tmpfs, then the work dir, which it leaves alone if anything
// is still mounted under it.
func (b *bench) close() {
	b.h.close()
	if ok, _ := isMounted(b.tmpfs); ok {
		if err := forceUnmount(b.tmpfs); err != nil {
			fmt.Fprintf(os.Stderr, "fsbench: unmount %s: %v\n", b.tmpfs, err)
		}
	}
	if m := mountsUnder(b.work); len(m) > 0 {
		fmt.Fprintf(os.Stderr, "fsbench: still mounted, not removing %s: %s\n", b.work, strings.Join(m, " "))
		return
	}
	os.RemoveAll(b.work)
}

// prepare mounts the tmpfs, tars the Go sources onto it and starts the
// KMS emulator with its two proxies.
func (b *bench) prepare(ctx context.Context) error {
	if err := os.Mkdir(b.tmpfs, 0o755); err != nil {
		return err
	}
	if err := mountTmpfs(b.tmpfs, tmpfsSize); err != nil {
		return err
	}
	for _, fs := range []string{fsKmsfs, fsKmsfsNames, fsKmsfsMetrics, fsLoop} {
		if err := os.Mkdir(b.mountPoint(fs), 0o755); err != nil {
			return err
		}
	}
	goroot, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	if err != nil {
		return fmt.Errorf("go env GOROOT: %w", err)
	}
	root := strings.TrimSpace(string(goroot))
	b.tarPath = filepath.Join(b.tmpfs, "gosrc.tar")
	src := filepath.Join(root, b.sizes.tarSubdir) // tarred as its base name: find lists exactly the tar's entries and "."
	if err := runCmd(ctx, nil, "tar", "-cf", b.tarPath, "-C", filepath.Dir(src), filepath.Base(src)); err != nil {
		return err
	}
	list, err := exec.CommandContext(ctx, "tar", "-tf", b.tarPath).Output()
	if err != nil {
		return fmt.Errorf("tar -tf: %w", err)
	}
	b.tarEntries = strings.Count(string(list), "\n")
	st, err := os.Stat(b.tarPath)
	if err != nil {
		return err
	}
	b.tarName = fmt.Sprintf("Go %s (%d entries, %d MiB)", b.sizes.tarSubdir, b.tarEntries, st.Size()>>20)
	fmt.Fprintf(os.Stderr, "fsbench: work dir %s, tmpfs %s; tarred $GOROOT/%s: %d entries, %d MiB\n",
		b.work, tmpfsSize, b.sizes.tarSubdir, b.tarEntries, st.Size()>>20)

	err = b.h.do(func() {
		b.kms = kmstest.Start(b.h)
		b.direct = kmstest.NewProxy(b.h, b.kms.Endpoint)
		b.slow = kmstest.NewProxy(b.h, b.kms.Endpoint)
		b.slow.SetLatency(kmsLatency)
	})
	if err != nil {
		return fmt.Errorf("local-kms: %w", err)
	}
	b.meta = newMeta(b)
	return nil
}

func (b *bench) mountPoint(fs string) string { return filepath.Join(b.work, "mnt-"+fs) }

// awsEnv points a kmsfs process at the emulator through proxy p.
func (b *bench) awsEnv(p *kmstest.Proxy) []string { return b.kms.Env(p.URL) }

// proxy returns the KMS proxy of group g's kmsfs volumes.
func (b *bench) proxy(g group) *kmstest.Proxy {
	if g.slowKMS {
		return b.slow
	}
	return b.direct
}

// kmsCounts returns how many requests of each counted operation reached p.
func kmsCounts(p *kmstest.Proxy) map[string]int {
	m := map[string]int{}
	for _, op := range kmsOps {
		m[op] = p.Requests(op)
	}
	return m
}

// mount starts fs on a fresh backing dir for group g, round r, and
// returns the daemon and the backing dir's parent on the tmpfs.
func (b *bench) mount(ctx context.Context, g group, fs string, round int) (*daemon, string, error) {
	top := filepath.Join(b.tmpfs, fmt.Sprintf("%s-r%d-%s", g.name, round, fs))
	backing := filepath.Join(top, "backing")
	if err := os.MkdirAll(backing, 0o755); err != nil {
		return nil, "", err
	}
	mnt := b.mountPoint(fs)
	logPath := filepath.Join(b.work, fmt.Sprintf("%s-r%d-%s.log", g.name, round, fs))
	if fs == fsLoop {
		d, err := startDaemon(ctx, fs, b.cfg.loopBin, []string{backing, mnt}, nil, mnt, logPath)
		return d, top, err
	}
	// The volume is approved in a trust dir of its own, not the host's.
	env := append(b.awsEnv(b.proxy(g)), "KMSFS_TRUST_DIR="+filepath.Join(top, "trust"))
	v, _ := g.variant(fs)
	initArgs := []string{"init", "--key", keySpec}
	if !v.encryptedNames {
		initArgs = append(initArgs, "--plaintext-names")
	}
	if err := runCmd(ctx, env, b.cfg.kmsfsBin, append(initArgs, backing)...); err != nil {
		return nil, top, err
	}
	// A default or flag init did not honour would set names in the clear
	// against themselves.
	c, err := volconf.Load(backing)
	if err != nil {
		return nil, top, err
	}
	if want := v.encryptedNames; c.EncryptedNames() != want {
		return nil, top, fmt.Errorf("kmsfs %s made a volume with encrypted names %v, want %v (features %q)", strings.Join(initArgs, " "), c.EncryptedNames(), want, c.Features)
	}
	if b.meta.Volume == "" && fs == fsKmsfs {
		b.meta.Volume = fmt.Sprintf("%s, block size %d, data-key policy %s, format %d", keySpec, c.BlockSize, c.DataKeyPolicy, c.FormatVersion)
		b.blockSize = c.BlockSize
	}
	args := append(append(append([]string{"mount", "-f"}, b.cfg.mountFlags...), v.flags...), backing, mnt)
	d, err := startDaemon(ctx, fs, b.cfg.kmsfsBin, args, env, mnt, logPath)
	return d, top, err
}

// runGroup runs group g's phases on a fresh mount of fs and records a
// sample per phase.
func (b *bench) runGroup(ctx context.Context, g group, fs string, round int) (err error) {
	fmt.Fprintf(os.Stderr, "fsbench: %s round %d/%d on %s\n", g.name, round, b.cfg.rounds, fs)
	d, top, err := b.mount(ctx, g, fs, round)
	if err != nil {
		return err
	}
	defer func() {
		serr := d.stop()
		if serr == nil {
			if fs == fsLoop {
				b.recordLoopStats(g, round, d)
			} else {
				b.recordKmsfsGCM(d)
			}
			serr = os.RemoveAll(top)
		}
		err = errors.Join(err, serr)
		if err != nil {
			err = fmt.Errorf("%w\n%s log (%s):\n%s", err, fs, d.log, d.logTail())
		}
	}()
	r := &groupRun{b: b, fs: fs, round: round, dir: d.mnt}
	if g.setup != nil {
		if err := g.setup(ctx, r); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	proxy := b.proxy(g)
	pid := d.pid()
	for _, p := range g.phases {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p.restart {
			nd, err := d.restart(ctx)
			if err != nil {
				return fmt.Errorf("%s: restart: %w", p.key, err)
			}
			d, pid = nd, nd.pid()
			r.dir = d.mnt
		}
		if p.drop {
			if err := dropCaches(); err != nil {
				return fmt.Errorf("drop caches: %w", err)
			}
		}
		if err := resetPeakRSS(pid); err != nil {
			return err
		}
		cpu0, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		kms0 := kmsCounts(proxy)
		t0 := time.Now()
		value, detail, err := p.run(ctx, r)
		elapsed := time.Since(t0)
		if err != nil {
			return fmt.Errorf("%s: %w", p.key, err)
		}
		cpu1, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		rss, err := peakRSS(pid)
		if err != nil {
			return err
		}
		calls := map[string]int{}
		for op, n := range kmsCounts(proxy) {
			if dn := n - kms0[op]; dn != 0 {
				calls[op] = dn
			}
		}
		if p.unit == unitSec {
			value = elapsed.Seconds()
		}
		s := sample{Group: g.name, Phase: p.key, FS: fs, Round: round, Unit: p.unit, Value: value,
			Seconds: elapsed.Seconds(), CPUSeconds: float64(cpu1-cpu0) / clkTck, PeakRSSKiB: rss, KMSCalls: calls, Detail: detail}
		b.samples = append(b.samples, s)
		fmt.Fprintf(os.Stderr, "fsbench:   %-34s %10.2f %-4s  cpu %6.2f s  rss %4d MiB  kms %d\n",
			p.label, s.Value, s.Unit, s.CPUSeconds, s.PeakRSSKiB>>10, total(calls))
	}
	if v, ok := g.variant(fs); ok && v.scrape {
		sc, err := scrapeMetrics(ctx, d.log)
		if err != nil {
			return err
		}
		sc.Group, sc.Round = g.name, round
		b.scrapes = append(b.scrapes, sc)
		fmt.Fprintf(os.Stderr, "fsbench:   metrics endpoint %s: %d kmsfs_ series\n", sc.Addr, sc.Series)
	}
	return nil
}

// servedLine is the loopback's exit line.
var servedLine = regexp.MustCompile(`loopbackfs: served reads=(\d+) read_bytes=(\d+) writes=(\d+) write_bytes=(\d+)`)

// recordLoopStats keeps what the stopped loopback daemon says it served,
// and the first time the options it mounted with (read only now: the mount
// shows before the daemon prints them).
func (b *bench) recordLoopStats(g group, round int, d *daemon) {
	if line, ok := findLine(d.log, "loopbackfs: mounted"); ok && b.meta.LoopbackOptions == "" {
		if i := strings.Index(line, ": MaxWrite="); i >= 0 {
			b.meta.LoopbackOptions = line[i+2:]
		}
	}
	line, ok := findLine(d.log, "loopbackfs: served")
	if !ok {
		return
	}
	m := servedLine.FindStringSubmatch(line)
	if m == nil {
		return
	}
	n := make([]int64, 4)
	for i := range n {
		n[i], _ = strconv.ParseInt(m[i+1], 10, 64)
	}
	b.daemons = append(b.daemons, daemonRun{Group: g.name, FS: fsLoop, Round: round,
		Reads: n[0], ReadBytes: n[1], Writes: n[2], WriteBytes: n[3]})
}

// gcmField is the AES-GCM implementation in kmsfs's start-up log line
// (or in its warning that vaesgcm failed its self-test), logged as text
// (gcm=vaesgcm) or JSON ("gcm":"vaesgcm").
var gcmField = regexp.MustCompile(`\bgcm"?[=:]"?([^"\s,}]+)`)

// recordKmsfsGCM keeps, the first time, which AES-GCM implementation the
// stopped kmsfs daemon said it used.
func (b *bench) recordKmsfsGCM(d *daemon) {
	if b.meta.KmsfsGCM != "" {
		return
	}
	raw, err := os.ReadFile(d.log)
	if err != nil {
		return
	}
	if m := gcmField.FindSubmatch(raw); m != nil {
		b.meta.KmsfsGCM = string(m[1])
	}
}

// measureFloor measures the AES-GCM floor once: opening 1 GiB in process,
// in requests of floorRequest bytes and blocks of the volume's size.
func (b *bench) measureFloor() error {
	bs := b.blockSize
	if bs == 0 {
		return fmt.Errorf("AES-GCM floor: no kmsfs volume's block size known yet")
	}
	r, err := gcmfloor.Measure(bs, floorRequest, gcmfloor.GiB)
	if err != nil {
		return err
	}
	b.floors = append(b.floors, r)
	fmt.Fprintf(os.Stderr, "fsbench:   %-34s %10.3f CPU-s/GiB (%s)\n", "AES-GCM floor, in process", r.PerGiB(), r.Impl)
	return nil
}

// findLine returns the last line of file path that contains s.
func findLine(path, s string) (string, bool) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	lines := strings.Split(string(raw), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i], true
		}
	}
	return "", false
}

func total(calls map[string]int) int {
	n := 0
	for _, v := range calls {
		n += v
	}
	return n
}

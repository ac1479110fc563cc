// Command fsbench is the filesystem benchmark of `make bench`: it measures
// kmsfs against a plain go-fuse loopback (internal/loopbackfs, FUSE
// passthrough off, so that its file data goes through its daemon) with
// both backing dirs on one tmpfs, so that the daemons are measured and not
// the disk.
//
// For every group of phases (sequential, random, small files, untar, and
// the small-file and untar phases again with the KMS 10 ms away) and every
// round, it mounts kmsfs on a fresh volume, runs the phases, unmounts,
// then does the same on the loopback. A group may list variants of kmsfs
// that run in the same rounds (the untar group on a volume with encrypted
// names; the seq, rand and small groups with the metrics endpoint on), and
// the table sets their rows against the plain kmsfs of the same rounds.
// The order of the mounts rotates by round. Each
// kmsfs volume uses an AWS KMS symmetric key of a local-kms emulator on
// 127.0.0.1, reached through a counting proxy (internal/kmstest). Around
// every phase it reads the daemon's CPU time and peak RSS from /proc.
// After each round of the sequential group it measures the AES-GCM floor
// in process (gcmfloor), and the table sets the daemon CPU that kmsfs
// spends over the loopback on the sequential read against it.
//
// It prints one table of medians and ratios kmsfs/loopback to stdout and to
// out/bench-fs-table.txt, and writes every sample to out/bench-fs.json.
// Progress goes to stderr. It needs root (tmpfs, drop_caches, direct FUSE
// mounts), fio, tar, bin/kmsfs, bin/loopbackfs and bin/local-kms: run it
// with `make bench-fs` from the repository root.
//
// Environment:
//
//	BENCH_ROUNDS=3        rounds per group (the table shows medians)
//	BENCH_PHASES=a,b      run only these groups: seq, rand, small, untar,
//	                      small-kms10ms, untar-kms10ms
//	BENCH_QUICK=1         small sizes and short runs, for a smoke test
//	KMSFS_MOUNT_FLAGS=... extra flags of `kmsfs mount`, for tuning
//
// Everything it mounts or starts is torn down on exit, on failure and on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The filesystems compared. fsKmsfs is kmsfs on a volume made with
// `kmsfs init --plaintext-names`; the others of kmsfs are its variants
// (variant), run only in the groups that list them, in the same rounds:
// fsKmsfsNames on a volume made by `kmsfs init` (names encrypted),
// fsKmsfsMetrics with its metrics endpoint on.
const (
	fsKmsfs        = "kmsfs"
	fsKmsfsNames   = "kmsfs-names"
	fsKmsfsMetrics = "kmsfs-metrics"
	fsLoop         = "loopback"
)

// Fixed parameters of the run.
const (
	tmpfsSize  = "6G"
	kmsLatency = 10 * time.Millisecond
	keySpec    = "awskms:alias/kmsfs-test" // kmstest.Alias, a symmetric key
	// floorRequest is the request size of the AES-GCM floor: the size of
	// the READs a sequential read through the mount arrives in (the
	// kernel's max_pages).
	floorRequest = 1 << 20
)

// sizes scale the phases; BENCH_QUICK=1 shrinks them.
type sizes struct {
	seq         int64         // sequential file
	rand        int64         // each random-I/O file (one per job)
	randTime    time.Duration // each random phase
	smallDirs   int           // directories of small files
	smallPerDir int           // small files per directory
	tarSubdir   string        // what of GOROOT is tarred
}

var fullSizes = sizes{seq: 1 << 30, rand: 256 << 20, randTime: 10 * time.Second, smallDirs: 50, smallPerDir: 100, tarSubdir: "src"}
var quickSizes = sizes{seq: 128 << 20, rand: 32 << 20, randTime: 2 * time.Second, smallDirs: 10, smallPerDir: 50, tarSubdir: "src/net"}

// config is what the environment and flags ask for.
type config struct {
	rounds     int
	only       []string // groups to run; nil: all
	quick      bool
	mountFlags []string
	kmsfsBin   string
	loopBin    string
	outDir     string
}

func loadConfig() (*config, error) {
	c := &config{rounds: 3}
	flag.StringVar(&c.kmsfsBin, "kmsfs", "bin/kmsfs", "kmsfs binary")
	flag.StringVar(&c.loopBin, "loopbackfs", "bin/loopbackfs", "loopbackfs binary")
	flag.StringVar(&c.outDir, "out", "out", "directory of bench-fs.json and bench-fs-table.txt")
	flag.Parse()
	if v := os.Getenv("BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("BENCH_ROUNDS=%q: want a positive integer", v)
		}
		c.rounds = n
	}
	if v := os.Getenv("BENCH_PHASES"); v != "" {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.only = append(c.only, p)
			}
		}
	}
	c.quick = os.Getenv("BENCH_QUICK") == "1"
	c.mountFlags = strings.Fields(os.Getenv("KMSFS_MOUNT_FLAGS"))
	for _, p := range []*string{&c.kmsfsBin, &c.loopBin} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("%w (run it through `make bench-fs`)", err)
		}
		*p = abs
	}
	return c, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("interrupted, everything torn down: %w", err)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fsbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	start := time.Now()
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it mounts a tmpfs and FUSE filesystems and drops the kernel caches")
	}
	for _, tool := range []string{"fio", "tar", "bash", "find", "du", "rm", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (make bench-fs installs fio)", tool)
		}
	}
	b, err := newBench(cfg)
	if err != nil {
		return err
	}
	defer b.close()
	if err := b.prepare(ctx); err != nil {
		return err
	}
	groups := b.groups()
	if cfg.only != nil {
		names := make([]string, len(groups))
		for i, g := range groups {
			names[i] = g.name
		}
		for _, o := range cfg.only {
			if !slices.Contains(names, o) {
				return fmt.Errorf("BENCH_PHASES: no group %q (groups: %s)", o, strings.Join(names, ", "))
			}
		}
		groups = slices.DeleteFunc(groups, func(g group) bool { return !slices.Contains(cfg.only, g.name) })
	}
	busy0, own0, err := busyTicks()
	if err != nil {
		return err
	}
	for _, g := range groups {
		for round := 1; round <= cfg.rounds; round++ {
			for _, fs := range roundOrder(g.filesystems(), round) {
				if err := b.runGroup(ctx, g, fs, round); err != nil {
					return fmt.Errorf("group %s, %s, round %d: %w", g.name, fs, round, err)
				}
			}
			if g.floor {
				if err := b.measureFloor(); err != nil {
					return fmt.Errorf("group %s, round %d: %w", g.name, round, err)
				}
			}
		}
	}
	b.meta.Duration = time.Since(start).Round(time.Second).String()
	busy1, own1, err := busyTicks()
	if err == nil {
		b.meta.BusyCPUSeconds = float64(busy1-busy0) / clkTck
		b.meta.OtherCPUSeconds = max(0, float64((busy1-busy0)-(own1-own0))/clkTck)
	}
	return b.report(groups)
}

package integration_test

import (
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// The concurrency tests run 8 writers and several readers at once through
// the mount and require that no operation fails and that every read
// returns whole blocks that a writer wrote there.
//
// Writers write whole, self-describing blocks (sxFillBlock), half of them
// through the page cache and half with O_DIRECT. Readers that check block
// contents read with O_DIRECT: their requests reach kmsfs as they are, and
// kmsfs must serve each one atomically. A buffered read of a block that a
// write is changing may see the page cache mid-copy, on any Linux file
// system, so buffered readers check only that their reads succeed in
// full; final contents are checked both ways, and again after a remount.

// Shape of the concurrency tests.
const (
	sxWorkers       = 8
	sxDirectReaders = 4
	sxCachedReaders = 2
	sxMaxRun        = 4 // blocks per write or read, at most
	sxConcBudget    = 3 * time.Minute
	sxManyFiles     = 200
	sxManyRounds    = 6
)

// sxConcShape returns, for block size bs, the blocks of the shared file
// and the writes of each writer.
func sxConcShape(bs int) (blocks, writes int) {
	if bs >= 64<<10 {
		return 32, 300
	}
	return 128, 800
}

// TestConcurrentDisjoint has 8 writers write disjoint block ranges of one
// file, with readers reading all of it, and requires of every read that
// each block is zeros (never written) or the content of one write by the
// block's owner, no older than the owner's last completed write and no
// newer than its latest begun one; and at the end, that the file holds
// each owner's last write.
func TestConcurrentDisjoint(t *testing.T) {
	seed := envSeed(t)
	for _, nm := range sxNameModes {
		for _, bs := range sxNamesBlockSizes(nm.encrypted) {
			t.Run(fmt.Sprintf("names=%s,bs=%d", nm.name, bs), func(t *testing.T) { sxDisjoint(t, seed, bs, nm.encrypted) })
		}
	}
}

func sxDisjoint(t *testing.T, seed uint64, bs int, encNames bool) {
	blocks, writes := sxConcShape(bs)
	c := newSXConc(t, bs, blocks, seed, encNames)
	per := blocks / sxWorkers
	c.owner = func(b int) int { return b / per }
	c.run(writes, func(w int, rng *mrand.Rand) (int, int) {
		b0 := w*per + rng.IntN(per)
		return b0, 1 + rng.IntN(min(sxMaxRun, (w+1)*per-b0))
	})
	c.checkFinal("after the run")
	c.v.Remount()
	c.checkFinal("after remount")
}

// TestConcurrentOverlapping has 8 writers write overlapping block ranges
// anywhere in one file, with readers reading all of it, and requires of
// every read that each block is zeros (never written) or the content of
// one write to it, and at the end that each block holds the last write
// to it of one writer.
func TestConcurrentOverlapping(t *testing.T) {
	seed := envSeed(t)
	for _, nm := range sxNameModes {
		for _, bs := range sxNamesBlockSizes(nm.encrypted) {
			t.Run(fmt.Sprintf("names=%s,bs=%d", nm.name, bs), func(t *testing.T) { sxOverlapping(t, seed, bs, nm.encrypted) })
		}
	}
}

func sxOverlapping(t *testing.T, seed uint64, bs int, encNames bool) {
	blocks, writes := sxConcShape(bs)
	blocks /= 4 // more collisions
	c := newSXConc(t, bs, blocks, seed, encNames)
	c.run(writes, func(w int, rng *mrand.Rand) (int, int) {
		b0 := rng.IntN(blocks)
		return b0, 1 + rng.IntN(min(sxMaxRun, blocks-b0))
	})
	c.checkFinal("after the run")
	c.v.Remount()
	c.checkFinal("after remount")
}

// sxConc is one shared file and the record of what its writers did.
type sxConc struct {
	t      *testing.T
	v      *fusetest.InProcess
	bs     int
	blocks int
	seed   uint64
	name   string
	owner  func(block int) int // the only writer of a block; nil if any

	// Published by writers, read by readers while they run.
	begun     [sxWorkers]atomic.Uint64 // each writer's latest seq begun
	completed []atomic.Uint64          // per block: latest seq completed (disjoint: by its owner)
	everDone  []atomic.Bool            // per block: some write to it completed
	// last[w][b] is writer w's last seq written to block b (0: none);
	// written by w, read after the writers are done.
	last [sxWorkers][]uint64

	errs sxErrs
	stop time.Time
}

func newSXConc(t *testing.T, bs, blocks int, seed uint64, encNames bool) *sxConc {
	c := &sxConc{t: t, v: fusetest.MountVolumeWith(t, bs, kfs.Options{}, encNames), bs: bs, blocks: blocks, seed: seed, name: "shared",
		completed: make([]atomic.Uint64, blocks), everDone: make([]atomic.Bool, blocks),
		stop: sxStop(t, sxConcBudget)}
	if encNames {
		c.name = sxLongName("shared", 0) // its stored form needs a side file
	}
	for w := range c.last {
		c.last[w] = make([]uint64, blocks)
	}
	// The file starts as holes: every block reads as zeros until written.
	fd, err := unix.Open(c.v.Path(c.name), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(blocks*bs)); err != nil {
		t.Fatal(err)
	}
	return c
}

// run starts the writers, each making writes writes at the block ranges
// pick returns, and the readers, which read until the writers are done.
func (c *sxConc) run(writes int, pick func(w int, rng *mrand.Rand) (b0, n int)) {
	start := time.Now()
	var writers, readers sync.WaitGroup
	var done atomic.Bool
	var nreads atomic.Int64
	for w := range sxWorkers {
		buf := sxAligned(c.t, sxMaxRun*c.bs)
		writers.Go(func() { c.writer(w, writes, pick, buf) })
	}
	for r := range sxDirectReaders + sxCachedReaders {
		buf := sxAligned(c.t, sxMaxRun*c.bs)
		readers.Go(func() { nreads.Add(c.reader(r, r < sxDirectReaders, &done, buf)) })
	}
	writers.Wait()
	done.Store(true)
	readers.Wait()
	c.errs.check(c.t, c.seed)
	c.t.Logf("seed %d: %d writers x %d writes and %d readers (%d reads) in %v",
		c.seed, sxWorkers, writes, sxDirectReaders+sxCachedReaders, nreads.Load(), time.Since(start).Round(time.Millisecond))
}

// writer w writes whole blocks, through the page cache if w is even and
// with O_DIRECT if odd, and fdatasyncs every 32 writes.
func (c *sxConc) writer(w, writes int, pick func(int, *mrand.Rand) (int, int), buf []byte) {
	rng := mrand.New(mrand.NewPCG(c.seed, uint64(w)))
	direct := w%2 == 1
	fd, err := sxOpen(c.v.Path(c.name), unix.O_RDWR, direct)
	if err != nil {
		c.errs.add("writer %d: open: %v", w, err)
		return
	}
	defer unix.Close(fd)
	for seq := uint64(1); seq <= uint64(writes); seq++ {
		if c.errs.failed.Load() {
			return
		}
		if time.Now().After(c.stop) {
			c.errs.add("writer %d: time budget exhausted after %d writes", w, seq-1)
			return
		}
		b0, n := pick(w, rng)
		for j := range n {
			sxFillBlock(buf[j*c.bs:(j+1)*c.bs], c.seed, int64(b0+j), w, seq)
		}
		c.begun[w].Store(seq)
		if err := sxPwrite(fd, buf[:n*c.bs], int64(b0*c.bs)); err != nil {
			c.errs.add("writer %d (direct=%v): write %d: blocks %d-%d: %v", w, direct, seq, b0, b0+n-1, err)
			return
		}
		for j := range n {
			c.last[w][b0+j] = seq
			c.completed[b0+j].Store(seq)
			c.everDone[b0+j].Store(true)
		}
		if seq%32 == 0 {
			if err := unix.Fdatasync(fd); err != nil {
				c.errs.add("writer %d: fdatasync: %v", w, err)
				return
			}
		}
	}
}

// reader r reads random block ranges until done; a direct reader checks
// every block it reads, a cached one that the read succeeds in full and
// that the size stays. It returns its count of reads.
func (c *sxConc) reader(r int, direct bool, done *atomic.Bool, buf []byte) int64 {
	rng := mrand.New(mrand.NewPCG(c.seed, 1000+uint64(r)))
	fd, err := sxOpen(c.v.Path(c.name), unix.O_RDONLY, direct)
	if err != nil {
		c.errs.add("reader %d: open: %v", r, err)
		return 0
	}
	defer unix.Close(fd)
	scratch := make([]byte, c.bs)
	var reads int64
	var minSeq [sxMaxRun]uint64
	var wasDone [sxMaxRun]bool
	for !done.Load() && !c.errs.failed.Load() {
		if time.Now().After(c.stop) {
			c.errs.add("reader %d: time budget exhausted after %d reads", r, reads)
			break
		}
		b0 := rng.IntN(c.blocks)
		n := 1 + rng.IntN(min(sxMaxRun, c.blocks-b0))
		for j := range n {
			minSeq[j], wasDone[j] = c.completed[b0+j].Load(), c.everDone[b0+j].Load()
		}
		m, err := sxPread(fd, buf[:n*c.bs], int64(b0*c.bs))
		reads++
		if err != nil || m != n*c.bs {
			c.errs.add("reader %d (direct=%v): read blocks %d-%d: %d of %d bytes: %v", r, direct, b0, b0+n-1, m, n*c.bs, err)
			return reads
		}
		if !direct {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Size != int64(c.blocks*c.bs) {
				c.errs.add("reader %d: fstat: size %d, want %d: %v", r, st.Size, c.blocks*c.bs, err)
				return reads
			}
			continue
		}
		for j := range n {
			b := b0 + j
			v, err := sxParseBlock(buf[j*c.bs:(j+1)*c.bs], scratch, c.seed, int64(b))
			switch {
			case err != nil:
				c.errs.add("reader %d: %v", r, err)
			case v.writer == -1 && wasDone[j]:
				c.errs.add("reader %d: block %d reads as zeros, but a write to it had completed", r, b)
			case v.writer == -1:
			case v.writer < 0 || v.writer >= sxWorkers:
				c.errs.add("reader %d: block %d names writer %d", r, b, v.writer)
			case v.seq == 0 || v.seq > c.begun[v.writer].Load():
				c.errs.add("reader %d: block %d holds writer %d's write %d, which it has not begun", r, b, v.writer, v.seq)
			case c.owner != nil && v.writer != c.owner(b):
				c.errs.add("reader %d: block %d holds writer %d's write, but only writer %d writes it", r, b, v.writer, c.owner(b))
			case c.owner != nil && v.seq < minSeq[j]:
				c.errs.add("reader %d: block %d holds write %d, but write %d had completed before the read", r, b, v.seq, minSeq[j])
			}
		}
	}
	return reads
}

// checkFinal reads the whole file through the page cache and with
// O_DIRECT and requires each block to hold, for disjoint writers, its
// owner's last write; for overlapping ones, the last write of one writer
// (zeros only if no writer wrote it).
func (c *sxConc) checkFinal(when string) {
	c.t.Helper()
	for _, direct := range []bool{false, true} {
		fd, err := sxOpen(c.v.Path(c.name), unix.O_RDONLY, direct)
		if err != nil {
			c.t.Fatalf("%s: open (direct=%v): %v", when, direct, err)
		}
		buf := sxAligned(c.t, c.blocks*c.bs)
		m, err := sxPread(fd, buf, 0)
		unix.Close(fd)
		if err != nil || m != len(buf) {
			c.t.Fatalf("%s: read (direct=%v): %d of %d bytes: %v", when, direct, m, len(buf), err)
		}
		scratch := make([]byte, c.bs)
		for b := range c.blocks {
			v, err := sxParseBlock(buf[b*c.bs:(b+1)*c.bs], scratch, c.seed, int64(b))
			if err != nil {
				c.errs.add("%s (direct=%v): %v", when, direct, err)
				continue
			}
			if c.owner != nil {
				w := c.owner(b)
				want := sxBlockVersion{writer: w, seq: c.last[w][b]}
				if want.seq == 0 {
					want.writer = -1
				}
				if v != want {
					c.errs.add("%s (direct=%v): block %d holds writer %d's write %d, want writer %d's last write %d",
						when, direct, b, v.writer, v.seq, w, want.seq)
				}
				continue
			}
			if v.writer == -1 {
				for w := range sxWorkers {
					if c.last[w][b] != 0 {
						c.errs.add("%s (direct=%v): block %d reads as zeros, but writer %d wrote it", when, direct, b, w)
						break
					}
				}
				continue
			}
			if v.writer >= sxWorkers || c.last[v.writer][b] != v.seq {
				c.errs.add("%s (direct=%v): block %d holds writer %d's write %d, not that writer's last write to it",
					when, direct, b, v.writer, v.seq)
			}
		}
	}
	c.errs.check(c.t, c.seed)
}

// TestConcurrentManyFiles has 8 goroutines create, write, truncate, read
// and reopen 200 files in one directory at once, each goroutine the only
// writer of its files and a reader of every file another has finished;
// then all read all files, with listings and stats alongside; then again
// after a remount. Every file must match its model at every read.
//
// With encrypted names every third file has a long name (its stored form
// needs a side file), and afterwards no name is found in the cipher dir.
func TestConcurrentManyFiles(t *testing.T) {
	seed := envSeed(t)
	for _, nm := range sxNameModes {
		for _, bs := range sxBlockSizes {
			t.Run(fmt.Sprintf("names=%s,bs=%d", nm.name, bs), func(t *testing.T) { sxManyFilesRun(t, seed, bs, nm.encrypted) })
		}
	}
}

func sxManyFilesRun(t *testing.T, seed uint64, bs int, encNames bool) {
	m := &sxMany{t: t, v: fusetest.MountVolumeWith(t, bs, kfs.Options{}, encNames), bs: bs, encNames: encNames, dir: "many", seed: seed, stop: sxStop(t, sxConcBudget)}
	if encNames {
		m.dir = "many-files-dir" // long enough to be looked for in the cipher dir
	}
	m.maxSize = min(16*bs, 256<<10) // 64 KiB at 4 KiB, 4 blocks at 64 KiB
	if err := os.Mkdir(m.v.Path(m.dir), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for g := range sxWorkers {
		wg.Go(func() { m.writeOwn(g) })
	}
	wg.Wait()
	m.errs.check(t, seed)
	phase1 := time.Since(start)
	m.readAll("after the writers")
	m.v.Remount()
	m.readAll("after remount")
	t.Logf("seed %d: %d files: %d ops while writing in %v, %d verified reads in all",
		seed, sxManyFiles, m.ops.Load(), phase1.Round(time.Millisecond), m.reads.Load())
	if encNames {
		secrets := []string{m.dir}
		for i := range sxManyFiles {
			secrets = append(secrets, m.name(i))
		}
		sxNoPlainNames(t, m.v.Cipher, secrets)
	}
}

// sxMany is the many-files test: a model per file, published once its
// owner has finished it.
type sxMany struct {
	t        *testing.T
	v        *fusetest.InProcess
	bs       int
	encNames bool
	dir      string
	maxSize  int
	seed     uint64
	final    [sxManyFiles]atomic.Pointer[[]byte]
	errs     sxErrs
	stop     time.Time

	ops, reads atomic.Int64
}

func (m *sxMany) path(i int) string { return m.v.Path(m.dir + "/" + m.name(i)) }

// name is file i's name: with encrypted names, longer, and every third
// one long.
func (m *sxMany) name(i int) string {
	switch {
	case !m.encNames:
		return fmt.Sprintf("m%03d", i)
	case i%3 == 0:
		return sxLongName(fmt.Sprintf("many-file-%03d", i), i)
	}
	return fmt.Sprintf("many-file-%03d", i)
}

// writeOwn creates goroutine g's files (every sxWorkers-th), keeps them
// all open, and in rounds writes, truncates and reads each against its
// model; between files it checks a file another goroutine has finished.
func (m *sxMany) writeOwn(g int) {
	rng := mrand.New(mrand.NewPCG(m.seed, 2000+uint64(g)))
	var idx []int
	for i := g; i < sxManyFiles; i += sxWorkers {
		idx = append(idx, i)
	}
	fds := make(map[int]int, len(idx))
	models := make(map[int][]byte, len(idx))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, i := range idx {
		fd, err := unix.Open(m.path(i), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			m.errs.add("goroutine %d: create m%03d: %v", g, i, err)
			return
		}
		fds[i] = fd
		m.ops.Add(1)
	}
	buf := make([]byte, m.maxSize)
	for round := range sxManyRounds {
		for _, i := range idx {
			if m.errs.failed.Load() {
				return
			}
			if time.Now().After(m.stop) {
				m.errs.add("goroutine %d: time budget exhausted in round %d", g, round)
				return
			}
			if !m.step(g, i, fds, models, rng, buf) {
				return
			}
			if j := rng.IntN(sxManyFiles); m.final[j].Load() != nil && !m.verify(fmt.Sprintf("goroutine %d", g), j, buf) {
				return
			}
		}
	}
	for _, i := range idx {
		if err := unix.Close(fds[i]); err != nil {
			m.errs.add("goroutine %d: close m%03d: %v", g, i, err)
			return
		}
		delete(fds, i)
		model := models[i]
		m.final[i].Store(&model)
		if !m.verify(fmt.Sprintf("goroutine %d (owner)", g), i, buf) {
			return
		}
	}
}

// step makes one random change to file i (a write, possibly past the end,
// a truncate, or a close and reopen, sometimes with O_TRUNC) and reads
// part of it back. It reports whether all went well.
func (m *sxMany) step(g, i int, fds map[int]int, models map[int][]byte, rng *mrand.Rand, buf []byte) bool {
	model := models[i]
	fd := fds[i]
	var what string
	var err error
	switch k := rng.IntN(10); {
	case k < 6:
		off := rng.IntN(m.maxSize - 1)
		n := 1 + rng.IntN(min(2*m.bs, m.maxSize-off))
		p := buf[:n]
		sxRandFill(rng, p)
		what = fmt.Sprintf("pwrite off=%d len=%d", off, n)
		if err = sxPwrite(fd, p, int64(off)); err == nil {
			if end := off + n; end > len(model) {
				model = append(model, make([]byte, end-len(model))...)
			}
			copy(model[off:], p)
		}
	case k < 8:
		size := rng.IntN(m.maxSize)
		what = fmt.Sprintf("ftruncate size=%d", size)
		if err = unix.Ftruncate(fd, int64(size)); err == nil {
			if size > len(model) {
				model = append(model, make([]byte, size-len(model))...)
			}
			model = model[:size]
		}
	default:
		flags := unix.O_RDWR | unix.O_CLOEXEC
		if rng.IntN(4) == 0 {
			flags |= unix.O_TRUNC
		}
		what = fmt.Sprintf("close and reopen O_TRUNC=%v", flags&unix.O_TRUNC != 0)
		if err = unix.Close(fd); err == nil {
			delete(fds, i)
			if fd, err = unix.Open(m.path(i), flags, 0); err == nil {
				fds[i] = fd
				if flags&unix.O_TRUNC != 0 {
					model = model[:0]
				}
			}
		}
	}
	m.ops.Add(1)
	models[i] = model
	if err != nil {
		m.errs.add("goroutine %d: m%03d: %s: %v", g, i, what, err)
		return false
	}
	off := rng.IntN(max(1, len(model)))
	n := rng.IntN(2*m.bs + 1)
	got, err := sxPread(fd, buf[:n], int64(off))
	want := model[min(off, len(model)):min(off+n, len(model))]
	m.reads.Add(1)
	if err != nil {
		m.errs.add("goroutine %d: m%03d after %s: pread off=%d len=%d: %v", g, i, what, off, n, err)
		return false
	}
	if d := sxDiff(buf[:got], want, int64(off), m.bs); d != "" {
		m.errs.add("goroutine %d: m%03d after %s: pread off=%d len=%d: %s", g, i, what, off, n, d)
		return false
	}
	return true
}

// verify reads finished file i in full through a new descriptor and
// compares it, and its size, with its model.
func (m *sxMany) verify(who string, i int, buf []byte) bool {
	want := *m.final[i].Load()
	fd, err := unix.Open(m.path(i), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.errs.add("%s: open m%03d: %v", who, i, err)
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != int64(len(want)) {
		m.errs.add("%s: m%03d: size %d, want %d: %v", who, i, st.Size, len(want), err)
		return false
	}
	n, err := sxPread(fd, buf[:cap(buf)], 0)
	m.reads.Add(1)
	if err != nil {
		m.errs.add("%s: read m%03d: %v", who, i, err)
		return false
	}
	if d := sxDiff(buf[:n], want, 0, m.bs); d != "" {
		m.errs.add("%s: m%03d: %s", who, i, d)
		return false
	}
	return true
}

// readAll has 8 goroutines read every file in full, each in its own
// order, while another lists the directory and stats every file.
func (m *sxMany) readAll(when string) {
	m.t.Helper()
	var wg sync.WaitGroup
	for g := range sxWorkers {
		wg.Go(func() {
			buf := make([]byte, m.maxSize)
			for _, i := range mrand.New(mrand.NewPCG(m.seed, 3000+uint64(g))).Perm(sxManyFiles) {
				if time.Now().After(m.stop) {
					m.errs.add("%s: reader %d: time budget exhausted", when, g)
					return
				}
				if m.errs.failed.Load() || !m.verify(fmt.Sprintf("%s: reader %d", when, g), i, buf) {
					return
				}
			}
		})
	}
	wg.Go(func() {
		es, err := os.ReadDir(m.v.Path(m.dir))
		if err != nil || len(es) != sxManyFiles {
			m.errs.add("%s: readdir: %d entries, want %d: %v", when, len(es), sxManyFiles, err)
			return
		}
		for i := range sxManyFiles {
			var st unix.Stat_t
			if err := unix.Stat(m.path(i), &st); err != nil || st.Size != int64(len(*m.final[i].Load())) {
				m.errs.add("%s: stat m%03d: size %d, want %d: %v", when, i, st.Size, len(*m.final[i].Load()), err)
				return
			}
		}
	})
	wg.Wait()
	m.errs.check(m.t, m.seed)
}

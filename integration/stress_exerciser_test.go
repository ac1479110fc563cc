package integration_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// The differential exerciser runs a random sequence of file operations
// through the mount and, identically, on a plain directory, and requires
// the same results: bytes and counts of every read and write, errors,
// sizes, names. The sequence comes from one seed (printed; KMSFS_SEED
// repeats it) and covers pwrite and write at offsets biased to block
// boundaries, within and past the end (holes), pread, ftruncate and
// truncate up and down, fallocate (mode 0 and KEEP_SIZE), mmap reads and
// MAP_SHARED writes (then msync, fsync or fdatasync), close and reopen (O_TRUNC,
// O_APPEND), rename between the files' names, fsync, stat and readdir.
// Every sxCompareEvery operations, after every remount and at the end it
// compares every file in full; it remounts every sxRemountEvery
// operations and at the end.
//
// Mapped memory of the mount is only ever touched inside system calls (a
// pread into it, a pwrite from it): the mount is served by this process,
// and a page fault taken in Go code could wait for a daemon that the
// garbage collector has stopped. See opMmap for why nothing dirty is
// ever left to munmap.

// Shape of an exerciser run.
const (
	sxFileCount    = 4
	sxDefaultOps   = 20000
	sxCompareEvery = 500
	sxRemountEvery = 5000
	sxHistoryLen   = 40
	sxMinBudget    = 5 * time.Minute
	sxOpBudget     = 2 * time.Millisecond // per op, for long soak runs
)

// TestExerciser runs the exerciser on a 4 KiB and a 64 KiB volume, with
// names in the clear and encrypted. With encrypted names half of the
// files have long names (stored hashed, with a side file), which every
// rename moves between; a tree of names and symlink targets (sxNamesTree)
// stands beside them in both directories; and at the end the tree reads
// back and no name of the run is found in the cipher dir. That run does a
// quarter of the operations in make test (all of them under make soak).
func TestExerciser(t *testing.T) {
	seed := envSeed(t)
	for _, nm := range sxNameModes {
		ops := sxOps(t, sxDefaultOps)
		if nm.encrypted && !ftSoak() {
			ops = sxOps(t, sxDefaultOps/4)
		}
		for _, bs := range sxBlockSizes {
			t.Run(fmt.Sprintf("names=%s,bs=%d", nm.name, bs), func(t *testing.T) {
				x := newSXExerciser(t, bs, seed, ops, nm.encrypted)
				var tree []sxTreeEntry
				if nm.encrypted {
					tree = sxNamesTree()
					sxMakeTree(t, x.v.Dir, tree)
					sxMakeTree(t, x.ref, tree)
				}
				start := time.Now()
				x.run()
				t.Logf("seed %d, bs=%d: %d ops in %v (%d compares, %d remounts); ops: %s; failed alike on both sides: %v",
					seed, bs, x.ops, time.Since(start).Round(time.Millisecond), x.compares, x.remounts, x.countSummary(), x.bothFailed)
				if nm.encrypted {
					sxCheckTree(t, x.v.Dir, tree)
					var names []string
					for i := range sxFileCount {
						names = append(names, x.name(i))
					}
					sxNoPlainNames(t, x.v.Cipher, sxTreeSecrets(tree, names...))
				}
			})
		}
	}
}

// sxXFile is one of the exerciser's file names and the descriptors open
// on it in the mount (m) and in the plain directory (r), -1 when closed.
type sxXFile struct {
	m, r   int
	append bool
}

// sxExerciser is one run: the mount, the plain directory it is compared
// with, the random source and the history of the last operations.
type sxExerciser struct {
	t         *testing.T
	v         *fusetest.InProcess
	ref       string
	bs        int64
	encNames  bool
	maxBlocks int64 // offsets chosen go up to about this many blocks
	seed      uint64
	ops       int
	rng       *mrand.Rand
	data      *mrand.ChaCha8
	files     [sxFileCount]sxXFile
	scratch   int // a plain file for copying from and into mapped memory
	buf, got  []byte
	stop      time.Time

	op                 int // current operation, from 1
	hist               []string
	counts             map[string]int
	bothFailed         map[string]int // "op: errno" failing alike on both sides
	compares, remounts int
}

func newSXExerciser(t *testing.T, bs int, seed uint64, ops int, encNames bool) *sxExerciser {
	v := fusetest.MountVolumeWith(t, bs, kfs.Options{}, encNames)
	x := &sxExerciser{t: t, v: v, ref: t.TempDir(), bs: int64(bs), seed: seed, ops: ops, encNames: encNames,
		counts: map[string]int{}, bothFailed: map[string]int{}, stop: sxStop(t, max(sxMinBudget, time.Duration(ops)*sxOpBudget))}
	x.maxBlocks = max(10, (256<<10)/x.bs) // 256 KiB at 4 KiB, 640 KiB at 64 KiB
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(bs))
	if encNames {
		key[16] = 1 // a sequence of its own, the plaintext one unchanged
	}
	x.data = mrand.NewChaCha8(key)
	x.rng = mrand.New(x.data)
	x.buf = make([]byte, 1<<20)
	x.got = make([]byte, 1<<20)
	for i := range x.files {
		x.files[i] = sxXFile{m: -1, r: -1}
	}
	fd, err := unix.Open(filepath.Join(t.TempDir(), "scratch"), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	x.scratch = fd
	t.Cleanup(func() {
		x.closeAll()
		unix.Close(x.scratch)
	})
	return x
}

// sxOpTable lists the random operations and their weights.
var sxOpTable = []struct {
	name   string
	weight int
	fn     func(x *sxExerciser, i int)
}{
	{"write", 26, (*sxExerciser).opWrite},
	{"read", 18, (*sxExerciser).opRead},
	{"truncate", 8, (*sxExerciser).opTruncate},
	{"fallocate", 5, (*sxExerciser).opFallocate},
	{"mmap-read", 4, func(x *sxExerciser, i int) { x.opMmap(i, false) }},
	{"mmap-write", 5, func(x *sxExerciser, i int) { x.opMmap(i, true) }},
	{"reopen", 7, (*sxExerciser).opReopen},
	{"rename", 3, (*sxExerciser).opRename},
	{"fsync", 2, (*sxExerciser).opFsync},
	{"stat", 5, (*sxExerciser).opStat},
	{"readdir", 1, func(x *sxExerciser, _ int) { x.compareNames() }},
}

func (x *sxExerciser) run() {
	total := 0
	for _, o := range sxOpTable {
		total += o.weight
	}
	for x.op = 1; x.op <= x.ops; x.op++ {
		if time.Now().After(x.stop) {
			x.failf("time budget exhausted after %d of %d ops", x.op-1, x.ops)
		}
		w := x.rng.IntN(total)
		k := 0
		for w >= sxOpTable[k].weight {
			w -= sxOpTable[k].weight
			k++
		}
		x.counts[sxOpTable[k].name]++
		sxOpTable[k].fn(x, x.rng.IntN(sxFileCount))
		if x.op%sxRemountEvery == 0 && x.op < x.ops {
			x.restart()
		} else if x.op%sxCompareEvery == 0 {
			x.compareAll()
		}
	}
	x.op = x.ops
	x.compareAll()
	x.restart()
}

// note records what the current operation does, for the failure report.
func (x *sxExerciser) note(format string, args ...any) {
	s := fmt.Sprintf("#%d ", x.op) + fmt.Sprintf(format, args...)
	if len(x.hist) == sxHistoryLen {
		x.hist = x.hist[1:]
	}
	x.hist = append(x.hist, s)
}

// failf fails the test with the recent history, the seed and the command
// that repeats the run.
func (x *sxExerciser) failf(format string, args ...any) {
	x.t.Helper()
	ops := x.ops
	if ops == sxDefaultOps {
		ops = 0
	}
	x.t.Fatalf("exerciser failed at op %d of %d (bs=%d): %s\nlast operations:\n  %s\nseed %d; reproduce with:\n  %s",
		x.op, x.ops, x.bs, fmt.Sprintf(format, args...), strings.Join(x.hist, "\n  "), x.seed, sxRepro(x.t, x.seed, ops))
}

// agree fails the test unless m (the mount's result) and r (the plain
// directory's) are both nil or the same errno. It reports whether both
// succeeded.
func (x *sxExerciser) agree(what string, m, r error) bool {
	x.t.Helper()
	if m == nil && r == nil {
		return true
	}
	var me, re unix.Errno
	if errors.As(m, &me) && errors.As(r, &re) && me == re {
		x.bothFailed[fmt.Sprintf("%s: %v", what, me)]++
		x.note("  both failed: %v", me)
		return false
	}
	x.failf("%s: mount: %v, plain directory: %v", what, m, r)
	return false
}

// name is file i's name: f0, f1, ... with names in the clear; with
// encrypted names longer, and long for odd i.
func (x *sxExerciser) name(i int) string {
	switch {
	case !x.encNames:
		return fmt.Sprintf("f%d", i)
	case i%2 == 1:
		return sxLongName(fmt.Sprintf("exerciser-file-%d", i), i)
	}
	return fmt.Sprintf("exerciser-file-%d", i)
}

func (x *sxExerciser) refPath(i int) string { return filepath.Join(x.ref, x.name(i)) }

// exists reports whether file i exists (in the plain directory).
func (x *sxExerciser) exists(i int) bool {
	var st unix.Stat_t
	return unix.Lstat(x.refPath(i), &st) == nil
}

// refSize returns the size of file i in the plain directory (0 if absent).
func (x *sxExerciser) refSize(i int) int64 {
	var st unix.Stat_t
	if err := unix.Lstat(x.refPath(i), &st); err != nil {
		return 0
	}
	return st.Size
}

// open opens file i on both sides, creating it if absent.
func (x *sxExerciser) open(i, extra int) {
	x.t.Helper()
	flags := unix.O_RDWR | unix.O_CREAT | unix.O_CLOEXEC | extra
	m, merr := unix.Open(x.v.Path(x.name(i)), flags, 0o644)
	r, rerr := unix.Open(x.refPath(i), flags, 0o644)
	if merr == nil && rerr == nil {
		x.files[i] = sxXFile{m: m, r: r, append: extra&unix.O_APPEND != 0}
		return
	}
	if merr == nil {
		unix.Close(m)
	}
	if rerr == nil {
		unix.Close(r)
	}
	x.failf("open %s: mount: %v, plain directory: %v", x.name(i), merr, rerr)
}

// file returns file i, opening it (O_RDWR|O_CREAT) if closed.
func (x *sxExerciser) file(i int) *sxXFile {
	x.t.Helper()
	if x.files[i].m < 0 {
		x.note("open f%d", i)
		x.open(i, 0)
	}
	return &x.files[i]
}

func (x *sxExerciser) closeFile(i int) {
	f := &x.files[i]
	if f.m >= 0 {
		if err := unix.Close(f.m); err != nil {
			x.failf("close f%d in the mount: %v", i, err)
		}
		unix.Close(f.r)
	}
	*f = sxXFile{m: -1, r: -1}
}

func (x *sxExerciser) closeAll() {
	for i := range x.files {
		x.closeFile(i)
	}
}

// offset returns a file offset biased to block boundaries and to the end
// of file i, up to a few blocks past it.
func (x *sxExerciser) offset(i int) int64 {
	bs := x.bs
	k := x.rng.Int64N(x.maxBlocks + 1)
	switch x.rng.IntN(10) {
	case 0, 1, 2:
		return k * bs
	case 3:
		return max(0, k*bs-1)
	case 4:
		return k*bs + 1
	case 5:
		return x.refSize(i)
	case 6:
		return x.refSize(i) + x.rng.Int64N(2*bs)
	}
	return k*bs + x.rng.Int64N(bs)
}

// length returns a request length biased to block sizes: at least 1, at
// most 3 blocks.
func (x *sxExerciser) length() int {
	bs := int(x.bs)
	switch x.rng.IntN(12) {
	case 0:
		return 1
	case 1:
		return bs - 1
	case 2:
		return bs
	case 3:
		return bs + 1
	case 4:
		return 2*bs + x.rng.IntN(bs)
	case 5:
		return 1 + x.rng.IntN(64)
	case 6:
		return 3 * bs
	}
	return 1 + x.rng.IntN(2*bs)
}

// fill returns n bytes of seeded random data in x.buf, or zeros.
func (x *sxExerciser) fill(n int) []byte {
	p := x.buf[:n]
	if x.rng.IntN(10) == 0 {
		clear(p)
		return p
	}
	x.data.Read(p)
	return p
}

func (x *sxExerciser) opWrite(i int) {
	f := x.file(i)
	off, n := x.offset(i), x.length()
	p := x.fill(n)
	var mn, rn int
	var merr, rerr error
	if x.rng.IntN(4) == 0 {
		// write(2) at the descriptor's position (the end, with O_APPEND).
		x.note("lseek+write f%d off=%d len=%d append=%v", i, off, n, f.append)
		if _, err := unix.Seek(f.m, off, 0); err != nil {
			x.failf("lseek: %v", err)
		}
		if _, err := unix.Seek(f.r, off, 0); err != nil {
			x.failf("lseek: %v", err)
		}
		mn, merr = unix.Write(f.m, p)
		rn, rerr = unix.Write(f.r, p)
	} else {
		x.note("pwrite f%d off=%d len=%d append=%v", i, off, n, f.append)
		mn, merr = unix.Pwrite(f.m, p, off)
		rn, rerr = unix.Pwrite(f.r, p, off)
	}
	if x.agree("write", merr, rerr) && mn != rn {
		x.failf("write wrote %d bytes in the mount, %d in the plain directory", mn, rn)
	}
}

func (x *sxExerciser) opRead(i int) {
	f := x.file(i)
	off, n := x.offset(i), x.length()
	if x.rng.IntN(16) == 0 {
		off, n = 0, len(x.got)
	}
	x.note("pread f%d off=%d len=%d", i, off, n)
	x.compareRange(f, off, n)
}

// compareRange reads n bytes at off of f on both sides and compares them.
func (x *sxExerciser) compareRange(f *sxXFile, off int64, n int) {
	x.t.Helper()
	mn, merr := sxPread(f.m, x.got[:n], off)
	rn, rerr := sxPread(f.r, x.buf[:n], off)
	if !x.agree("read", merr, rerr) {
		return
	}
	if d := sxDiff(x.got[:mn], x.buf[:rn], off, int(x.bs)); d != "" {
		x.failf("read %d bytes at %d: %s", n, off, d)
	}
}

func (x *sxExerciser) opTruncate(i int) {
	var size int64
	switch x.rng.IntN(8) {
	case 0:
		size = 0
	case 1:
		size = max(0, x.refSize(i)+x.rng.Int64N(3)-1)
	default:
		size = x.offset(i)
	}
	if x.files[i].m >= 0 && x.rng.IntN(4) != 0 {
		x.note("ftruncate f%d size=%d (from %d)", i, size, x.refSize(i))
		x.agree("ftruncate", unix.Ftruncate(x.files[i].m, size), unix.Ftruncate(x.files[i].r, size))
		return
	}
	if !x.exists(i) {
		x.file(i)
	}
	// By name: through the open state if open, else without a handle.
	x.note("truncate f%d size=%d (from %d) open=%v", i, size, x.refSize(i), x.files[i].m >= 0)
	x.agree("truncate", unix.Truncate(x.v.Path(x.name(i)), size), unix.Truncate(x.refPath(i), size))
}

func (x *sxExerciser) opFallocate(i int) {
	f := x.file(i)
	mode := uint32(0)
	if x.rng.IntN(2) == 0 {
		mode = unix.FALLOC_FL_KEEP_SIZE
	}
	off, n := x.offset(i), int64(x.length())
	x.note("fallocate f%d mode=%d off=%d len=%d (size %d)", i, mode, off, n, x.refSize(i))
	x.agree("fallocate", unix.Fallocate(f.m, mode, off, n), unix.Fallocate(f.r, mode, off, n))
}

// opMmap maps a page-aligned range of file i on both sides and reads or
// writes part of it. A write reaches the mount by msync(MS_SYNC), fsync
// or fdatasync, always before munmap: munmap writes dirty pages back
// while it holds the process's mmap lock, and the daemon serving that
// writeback here is this process, which may need the same lock to grow
// its heap (a deadlock of in-process mounts only).
func (x *sxExerciser) opMmap(i int, write bool) {
	f := x.file(i)
	size := x.refSize(i)
	if size == 0 {
		x.note("mmap f%d: empty, skipped", i)
		return
	}
	page := int64(os.Getpagesize())
	moff := x.rng.Int64N(size) / page * page
	mlen := min(size-moff, 1+x.rng.Int64N(3*x.bs))
	lo := x.rng.Int64N(mlen)
	hi := lo + 1 + x.rng.Int64N(min(mlen-lo, 2*x.bs))
	flush := [...]string{"msync", "msync", "fsync", "fdatasync"}[x.rng.IntN(4)]
	if write {
		x.note("mmap-write f%d map=[%d,%d) range=[%d,%d) then %s", i, moff, moff+mlen, moff+lo, moff+hi, flush)
	} else {
		x.note("mmap-read f%d map=[%d,%d) range=[%d,%d)", i, moff, moff+mlen, moff+lo, moff+hi)
	}
	prot := unix.PROT_READ | unix.PROT_WRITE
	km, err := unix.Mmap(f.m, moff, int(mlen), prot, unix.MAP_SHARED)
	if err != nil {
		x.failf("mmap in the mount: %v", err)
	}
	defer func() {
		unix.Msync(km, unix.MS_SYNC) // nothing dirty is left to munmap
		unix.Munmap(km)
	}()
	rm, err := unix.Mmap(f.r, moff, int(mlen), prot, unix.MAP_SHARED)
	if err != nil {
		x.t.Fatalf("mmap in the plain directory: %v", err)
	}
	defer unix.Munmap(rm)
	n := int(hi - lo)
	if write {
		p := x.fill(n)
		if err := sxPwrite(x.scratch, p, 0); err != nil {
			x.t.Fatal(err)
		}
		if m, err := sxPread(x.scratch, km[lo:hi], 0); err != nil || m != n {
			x.failf("copy into the mount's mapping: %d of %d bytes: %v", m, n, err)
		}
		copy(rm[lo:hi], p)
		switch flush {
		case "msync":
			err = unix.Msync(km, unix.MS_SYNC)
		case "fsync":
			err = unix.Fsync(f.m)
		default:
			err = unix.Fdatasync(f.m)
		}
		if err != nil {
			x.failf("%s after mmap write: %v", flush, err)
		}
		return
	}
	if err := sxPwrite(x.scratch, km[lo:hi], 0); err != nil {
		x.failf("copy from the mount's mapping: %v", err)
	}
	if m, err := sxPread(x.scratch, x.got[:n], 0); err != nil || m != n {
		x.t.Fatalf("read scratch: %d of %d bytes: %v", m, n, err)
	}
	if d := sxDiff(x.got[:n], rm[lo:hi], moff+lo, int(x.bs)); d != "" {
		x.failf("mmap read: %s", d)
	}
}

func (x *sxExerciser) opReopen(i int) {
	x.closeFile(i)
	if x.rng.IntN(4) == 0 {
		x.note("close f%d", i)
		return
	}
	extra, desc := 0, ""
	if x.rng.IntN(8) == 0 {
		extra, desc = extra|unix.O_TRUNC, desc+"|O_TRUNC"
	}
	if x.rng.IntN(5) == 0 {
		extra, desc = extra|unix.O_APPEND, desc+"|O_APPEND"
	}
	x.note("reopen f%d O_RDWR|O_CREAT%s (size %d)", i, desc, x.refSize(i))
	x.open(i, extra)
}

// opRename renames file i over another name; open descriptors follow the
// file, and those of the file replaced are closed first.
func (x *sxExerciser) opRename(i int) {
	if !x.exists(i) {
		x.file(i)
	}
	j := (i + 1 + x.rng.IntN(sxFileCount-1)) % sxFileCount
	x.closeFile(j)
	x.note("rename f%d -> f%d (open=%v)", i, j, x.files[i].m >= 0)
	if x.agree("rename", unix.Rename(x.v.Path(x.name(i)), x.v.Path(x.name(j))), unix.Rename(x.refPath(i), x.refPath(j))) {
		x.files[j], x.files[i] = x.files[i], sxXFile{m: -1, r: -1}
	}
}

func (x *sxExerciser) opFsync(i int) {
	f := x.file(i)
	if x.rng.IntN(2) == 0 {
		x.note("fsync f%d", i)
		if err := unix.Fsync(f.m); err != nil {
			x.failf("fsync: %v", err)
		}
		return
	}
	x.note("fdatasync f%d", i)
	if err := unix.Fdatasync(f.m); err != nil {
		x.failf("fdatasync: %v", err)
	}
}

// opStat compares the size of file i by name and, if open, by descriptor.
func (x *sxExerciser) opStat(i int) {
	var ms, rs unix.Stat_t
	x.note("stat f%d", i)
	if x.agree("stat", unix.Stat(x.v.Path(x.name(i)), &ms), unix.Stat(x.refPath(i), &rs)) && ms.Size != rs.Size {
		x.failf("stat f%d: size %d in the mount, %d in the plain directory", i, ms.Size, rs.Size)
	}
	if f := x.files[i]; f.m >= 0 {
		x.agree("fstat", unix.Fstat(f.m, &ms), unix.Fstat(f.r, &rs))
		if ms.Size != rs.Size {
			x.failf("fstat f%d: size %d in the mount, %d in the plain directory", i, ms.Size, rs.Size)
		}
	}
}

// compareNames compares the directory listings.
func (x *sxExerciser) compareNames() {
	x.t.Helper()
	list := func(dir string) []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			x.failf("readdir: %v", err)
		}
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		slices.Sort(names)
		return names
	}
	m, r := list(x.v.Dir), list(x.ref)
	if !slices.Equal(m, r) {
		x.failf("readdir: mount has %q, plain directory has %q", m, r)
	}
}

// compareAll compares names, sizes and full contents of every file,
// reading through new descriptors.
func (x *sxExerciser) compareAll() {
	x.t.Helper()
	x.compares++
	x.note("compare all")
	x.compareNames()
	for i := range sxFileCount {
		if !x.exists(i) {
			continue
		}
		m, err := unix.Open(x.v.Path(x.name(i)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			x.failf("open f%d read-only: %v", i, err)
		}
		r, err := unix.Open(x.refPath(i), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(m)
			x.t.Fatal(err)
		}
		var ms, rs unix.Stat_t
		if err := unix.Fstat(m, &ms); err != nil || unix.Fstat(r, &rs) != nil || ms.Size != rs.Size {
			x.failf("f%d: size %d in the mount (err %v), %d in the plain directory", i, ms.Size, err, rs.Size)
		}
		for off := int64(0); off <= rs.Size; off += int64(len(x.got)) {
			x.compareRange(&sxXFile{m: m, r: r}, off, len(x.got))
		}
		unix.Close(m)
		unix.Close(r)
	}
}

// restart closes every descriptor, remounts with a new Manager and
// compares everything.
func (x *sxExerciser) restart() {
	x.t.Helper()
	x.note("remount")
	x.closeAll()
	x.v.Remount()
	x.remounts++
	x.compareAll()
}

func (x *sxExerciser) countSummary() string {
	var parts []string
	for _, o := range sxOpTable {
		parts = append(parts, fmt.Sprintf("%s=%d", o.name, x.counts[o.name]))
	}
	return strings.Join(parts, " ")
}

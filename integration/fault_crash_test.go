package integration_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math"
	mrand "math/rand/v2"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// Crash test bounds: the kill lands uniformly in [0, ftCrashMaxDelay) after
// the writer starts; files stay below ftCrashMaxBlocks blocks.
const (
	ftCrashMaxDelay  = 150 * time.Millisecond
	ftCrashMaxBlocks = 24
	ftCrashMaxFiles  = 6
	ftCrashMaxOps    = 1 << 20 // a writer never gets this far within the delay
)

// TestCrash SIGKILLs `kmsfs mount -f` at a random moment while a writer
// goroutine writes, truncates and fsyncs files and makes, renames, links
// and removes names through the mount, keeping a journal of what returned
// success. It then detaches the dead mount, mounts again and reads the
// whole tree back: every file opens; every block reads either its content
// before or after the one operation in flight at the kill; every
// acknowledged operation is there. That last check is stricter than
// "fsync'ed data is there": a killed daemon (unlike a crashed machine)
// loses nothing the backing file system already has, and kmsfs
// acknowledges a write only after its pwrite. No block may be unreadable,
// not even one the operation in flight was writing: the write journal
// (journal.Journal) finishes or undoes it.
//
// The names are checked the same way: the tree (every directory's
// listing, which names are files, symlinks or directories, which are hard
// links of one file, every symlink's target) must be the acknowledged one
// or that with the operation in flight wholly done, be it a create, a
// mkdir, a symlink, a hard link, a rename (in a directory or across, to a
// new name, over another entry or an empty directory, or an exchange), an
// unlink or an rmdir (of an empty directory, or of one with entries, which
// must fail and leave them all). Half of the names the
// writer makes are long (161 to 255 bytes, stored with a side file with
// encrypted names), and symlink targets reach 4095 bytes (a side file
// too): a crash must never leave a name half-made or half-moved, an entry
// without its side file, a symlink with another's target, a listed side
// file, or a directory without its ID; and the fresh mount must log no
// error while reading it all.
//
// Each state after verification is the next round's starting state, so
// damage a round leaves behind is found by the next.
func TestCrash(t *testing.T) {
	seed := envSeed(t)
	for _, nm := range sxNameModes {
		rounds := 20
		if ftSoak() {
			rounds = 200
		}
		for _, bs := range []int{4096, 65536} {
			t.Run(fmt.Sprintf("names=%s,bs=%d", nm.name, bs), func(t *testing.T) { ftCrashRun(t, seed, bs, rounds, nm.encrypted) })
		}
	}
}

// ftCrashStats counts what the rounds of one block size saw.
type ftCrashStats struct {
	rounds, acked, inflight int
	outcome                 map[string]int // by the in-flight operation's label: old, new, between
	kinds                   map[string]int // labels of the operations in flight
	synced                  bool           // the round ended with the model matching the files
}

func ftCrashRun(t *testing.T, seed uint64, bs, rounds int, encNames bool) {
	args := []string{"--block-size", strconv.Itoa(bs)}
	stream := uint64(bs) << 32
	if encNames {
		stream |= 1 << 63 // a sequence of its own
	} else {
		args = append(args, "--plaintext-names")
	}
	v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: args})
	v.MountForeground(t)
	model := newFtTree()
	st := &ftCrashStats{outcome: map[string]int{}, kinds: map[string]int{}}
	start := time.Now()
	for r := range rounds {
		rng := mrand.New(mrand.NewPCG(seed, stream|uint64(r)))
		delay := time.Duration(rng.Int64N(int64(ftCrashMaxDelay)))
		name := fmt.Sprintf("round=%d,kill=%v", r, delay.Round(time.Millisecond))
		// A failed round goes on to the next (its damage is cut off), so
		// that one run counts every kind of failure; one that lost its
		// mount or its model of the files ends the run.
		st.synced = false
		if !t.Run(name, func(t *testing.T) { ftCrashRound(t, v, rng, bs, delay, encNames, model, st) }) && (v.PID() == 0 || !st.synced) {
			break
		}
	}
	t.Logf("bs=%d: %d rounds in %v, %d operations acknowledged, %d in flight at the kill (%v; outcomes %v); %d files and symlinks, %d directories at the end",
		bs, st.rounds, time.Since(start).Round(time.Millisecond), st.acked, st.inflight, st.kinds, st.outcome, len(model.ents), len(model.dirs))
	// A write's record names its file by the path it has when written, and
	// nothing renames a file while a write of it is in flight, so each
	// mount must finish every record a kill left before it serves anything
	// (a record applied only at open leaves sizes from lookups stale for a
	// moment).
	recs := regexp.MustCompile(`records=(\d+) recovered=(\d+)`).FindAllStringSubmatch(v.LogText(), -1)
	for _, m := range recs {
		if m[1] != m[2] {
			t.Errorf("a mount recovered %s of %s journal records at mount time", m[2], m[1])
		}
	}
	t.Logf("bs=%d: %d mounts found journal records to apply", bs, len(recs))
	if encNames {
		// Every name made, in every component, and every symlink target:
		// none may be found in the cipher dir, not even in the journal the
		// kills left behind.
		sxNoPlainNames(t, v.Cipher, ftSecrets(model, nil))
	}
}

// ftSecrets returns every component of the names of t and every symlink
// target in it, and those of op if not nil.
func ftSecrets(t *ftTree, op *ftCrashOp) []string {
	var secrets []string
	for name, o := range t.ents {
		secrets = append(secrets, strings.Split(name, "/")...)
		if o.link {
			secrets = append(secrets, o.target)
		}
	}
	for d := range t.dirs {
		secrets = append(secrets, strings.Split(d, "/")...)
	}
	if op != nil {
		secrets = append(secrets, strings.Split(op.file, "/")...)
		secrets = append(secrets, strings.Split(op.to, "/")...)
		secrets = append(secrets, op.target)
	}
	return secrets
}

func ftCrashRound(t *testing.T, v *fusetest.CLIVolume, rng *mrand.Rand, bs int, delay time.Duration, encNames bool,
	model *ftTree, st *ftCrashStats) {
	w := &ftCrashWriter{rng: rng, bs: int64(bs), fds: map[string]int{}, t: model.clone(), j: ftJournal{synced: map[string]int{}}}
	root, err := unix.Open(v.Mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open mount root: %v", err)
	}
	defer unix.Close(root)
	w.root = root
	for _, name := range model.files() {
		if _, err := w.fd(name); err != nil {
			t.Fatalf("open %s: %v", sxShort(name), err)
		}
	}

	mark := v.LogMark()
	stop := make(chan struct{})
	done := make(chan struct{})
	defer func() {
		select {
		case <-done: // the writer's descriptors are ours again
			for _, fd := range w.fds {
				unix.Close(fd)
			}
		default: // a writer still blocked keeps them (the test failed)
		}
	}()
	go func() { defer close(done); w.run(stop) }()
	timer := time.NewTimer(delay)
	select {
	case <-timer.C:
	case <-done:
		timer.Stop()
		if w.j.inflight != nil {
			t.Fatalf("%v failed while the daemon was alive: %v", *w.j.inflight, w.j.err)
		}
	}
	v.Kill(t)
	close(stop)
	select {
	case <-done:
	case <-time.After(fusetest.ExitTimeout):
		t.Fatalf("the writer is still blocked %v after the daemon was killed", fusetest.ExitTimeout)
	}
	inf := w.j.inflight
	if inf != nil && !ftConnGone(w.j.err) {
		t.Errorf("%v failed with %v after the kill; want ENOTCONN, ECONNABORTED, EIO or a short write", *inf, w.j.err)
	}
	// The kernel answers requests cut off by the kill itself (EIO for a
	// write among them); the daemon must not have failed any.
	for _, l := range v.LogSince(mark) {
		if l.F["level"] == "error" {
			t.Errorf("the daemon failed an operation before the kill: %s", l.Raw)
		}
	}
	v.Detach(t)
	if encNames {
		// What a backup or sync of the cipher dir taken now would hold:
		// the names and targets of the round, nowhere, not in the journal
		// the kill left or in a side file (kmsfs's own files, which have
		// a '.' in their names; files of long names too, but they hold
		// no name).
		sxSearchCipherDir(t, v.Cipher, ftSecrets(w.t, inf), func(rel string) bool {
			own := func(name string) bool { return names.IsSpecial(name) && !names.IsLong(name) }
			top, _, _ := strings.Cut(rel, "/")
			return own(top) || own(path.Base(rel)) // the journal's files, and side files
		})
	}
	mark = v.LogMark()
	v.MountForeground(t)

	st.rounds++
	st.acked += len(w.j.acked)
	desc := "none"
	if inf != nil {
		st.inflight++
		st.kinds[inf.label]++
		desc = inf.String()
	}
	t.Logf("%d operations acknowledged; in flight: %s", len(w.j.acked), desc)
	ftCrashVerify(t, v, bs, w.t, &w.j, model, st)
	// Reading every directory, file and symlink must have found nothing
	// to complain of: no entry left out, no directory without its ID, no
	// side file missing.
	for _, l := range v.LogSince(mark) {
		if l.F["level"] == "error" {
			t.Errorf("the mount after the crash logged an error (in flight: %s): %s", desc, l.Raw)
		}
	}
}

// ftWalk reads the whole tree through the mount: every directory listed,
// every file read block by block, every symlink's target. Hard links of
// one object (by inode number) share one ftObj. It returns the tree, the
// blocks read of each file, and false if a listing, a stat or a readlink
// failed (reported).
func ftWalk(t *testing.T, v *fusetest.CLIVolume, bs int) (*ftTree, map[*ftObj]*ftBlocks, bool) {
	t.Helper()
	got, blocks, objs, ok := newFtTree(), map[*ftObj]*ftBlocks{}, map[uint64]*ftObj{}, true
	queue := []string{""}
	for len(queue) > 0 { // bounded: each directory of the tree once
		dir := queue[0]
		queue = queue[1:]
		es, err := os.ReadDir(v.Path(dir))
		if err != nil {
			t.Errorf("directory %q does not list after the crash: %v", sxShort(dir), err)
			ok = false
			continue
		}
		for _, e := range es {
			name := path.Join(dir, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(v.Path(name), &st); err != nil {
				t.Errorf("%s, listed, does not stat after the crash: %v", sxShort(name), err)
				ok = false
				continue
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				got.dirs[name] = true
				queue = append(queue, name)
				continue
			case unix.S_IFLNK, unix.S_IFREG:
			default:
				t.Errorf("%s is of mode %o after the crash", sxShort(name), st.Mode)
				ok = false
				continue
			}
			if o := objs[st.Ino]; o != nil {
				got.ents[name] = o
				continue
			}
			o := &ftObj{link: st.Mode&unix.S_IFMT == unix.S_IFLNK}
			if o.link {
				target, err := os.Readlink(v.Path(name))
				if err != nil {
					t.Errorf("symlink %s does not read after the crash: %v", sxShort(name), err)
					ok = false
					continue
				}
				o.target = target
			} else {
				b, err := ftReadBlocks(v.Path(name), bs)
				if err != nil {
					t.Errorf("%s does not open after the crash: %v", sxShort(name), err)
					ok = false
					continue
				}
				o.data, blocks[o] = b.Data, b
			}
			objs[st.Ino] = o
			got.ents[name] = o
		}
	}
	return got, blocks, ok
}

// ftShape describes the names of t without the files' content: each
// name's type, a symlink's target and, for hard links, the first name of
// the object.
func ftShape(t *ftTree) map[string]string {
	first := map[*ftObj]string{}
	for _, name := range t.names() {
		if _, ok := first[t.ents[name]]; !ok {
			first[t.ents[name]] = name
		}
	}
	shape := make(map[string]string, len(t.ents)+len(t.dirs))
	for d := range t.dirs {
		shape[d] = "directory"
	}
	for name, o := range t.ents {
		kind := "file"
		if o.link {
			kind = fmt.Sprintf("symlink to %s", sxShort(o.target))
			if len(o.target) > 40 {
				kind += fmt.Sprintf(" (sum %x)", sha256.Sum256([]byte(o.target)))
			}
		}
		if f := first[o]; f != name {
			kind += ", hard link of " + sxShort(f)
		}
		shape[name] = kind
	}
	return shape
}

// ftSameData reports whether every file of got has the content of the
// file of that name in want.
func ftSameData(got, want *ftTree) bool {
	for name, o := range got.ents {
		if w := want.ents[name]; !o.link && (w == nil || w.link || !bytes.Equal(o.data, w.data)) {
			return false
		}
	}
	return true
}

// ftShapeDiff describes how shape got differs from want, for messages.
func ftShapeDiff(want, got map[string]string) string {
	var diffs []string
	for _, name := range slices.Sorted(maps.Keys(want)) {
		switch g, ok := got[name]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s (%s) missing", sxShort(name), want[name]))
		case g != want[name]:
			diffs = append(diffs, fmt.Sprintf("%s is %s, want %s", sxShort(name), g, want[name]))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s (%s) extra", sxShort(name), got[name]))
		}
	}
	if len(diffs) > 6 {
		diffs = append(diffs[:6], fmt.Sprintf("and %d more", len(diffs)-6))
	}
	return strings.Join(diffs, "; ")
}

// ftConnGone reports whether err is what an operation on a mount whose
// daemon died returns: ENOTCONN for a new request, ECONNABORTED or (for a
// write through the page cache) EIO for one cut off.
func ftConnGone(err error) bool {
	var short *sxShortWrite
	if errors.As(err, &short) {
		return true // the kernel split the write, and the kill cut off its rest
	}
	e := mntErrno(err)
	return e == syscall.ENOTCONN || e == syscall.ECONNABORTED || e == syscall.EIO
}

// ftCrashVerify reads the whole tree back through the fresh mount, checks
// its names against the acknowledged tree acked and that with the
// operation in flight done, and every file's content against acked and the
// operation in flight; and sets model to what is there now.
func ftCrashVerify(t *testing.T, v *fusetest.CLIVolume, bs int, acked *ftTree, j *ftJournal, model *ftTree, st *ftCrashStats) {
	t.Helper()
	inf := j.inflight
	done := acked.clone()
	if inf != nil {
		done.apply(*inf)
	}
	got, blocks, walked := ftWalk(t, v, bs)
	shape, oldShape, newShape := ftShape(got), ftShape(acked), ftShape(done)
	isOld, isNew := maps.Equal(shape, oldShape), maps.Equal(shape, newShape)
	base := acked // what the content is checked against
	switch {
	case walked && !isOld && !isNew:
		t.Errorf("the tree after the crash is neither the acknowledged one nor that with the operation in flight (%s): against the acknowledged one: %s; against the other: %s",
			ftInflight(inf, ""), ftShapeDiff(oldShape, shape), ftShapeDiff(newShape, shape))
	case inf == nil || inf.kind == "write" || inf.kind == "truncate":
		// Counted by content below.
	case isOld && isNew:
		// The same names either way (an fsync, a rename onto a hard link,
		// an exchange of two files): the content tells.
		switch oldData, newData := ftSameData(got, acked), ftSameData(got, done); {
		case newData && !oldData:
			base = done
			st.outcome[inf.label+"=new"]++
		case oldData && !newData:
			st.outcome[inf.label+"=old"]++
		default:
			st.outcome[inf.label+"=same"]++
		}
	case isNew:
		base = done
		st.outcome[inf.label+"=new"]++
	default:
		st.outcome[inf.label+"=old"]++
	}
	// The files' content, one check per object.
	cut := map[*ftObj]int64{}
	for _, name := range got.files() {
		o := got.ents[name]
		if _, seen := cut[o]; seen {
			continue
		}
		cut[o] = -1
		b := base.ents[name]
		if b == nil || b.link {
			continue // its name is wrong, reported above
		}
		old, nw := b.data, b.data
		touched := inf != nil && (inf.kind == "write" || inf.kind == "truncate") && base.ents[inf.file] == b
		if touched {
			nw = ftApply(old, *inf)
		}
		gotData := o.data
		cuts := []int64{0, math.MaxInt64} // the operation in flight not done, or done
		if touched {
			cuts = append(cuts, ftKernelSplits(*inf)...)
		}
		lo, hi := min(len(old), len(nw)), max(len(old), len(nw))
		if len(gotData) < lo || len(gotData) > hi {
			t.Errorf("%s: size %d after the crash; want %d (acknowledged) or %d (with the operation in flight)%s",
				sxShort(name), len(gotData), len(old), len(nw), ftCrashHistory(j, name))
			continue
		}
		bad, firstBad := false, int64(-1)
		for i := int64(0); i*int64(bs) < int64(len(gotData)); i++ {
			lo, hi := i*int64(bs), min((i+1)*int64(bs), int64(len(gotData)))
			if err, ok := blocks[o].Bad[i]; ok {
				// The write journal finishes or undoes the change in
				// flight, so not even the blocks it was writing may be
				// torn.
				if firstBad < 0 {
					firstBad = i
				}
				bad = true
				t.Errorf("%s block %d unreadable after the crash (%v); in flight: %v (cipher file: %s)%s",
					sxShort(name), i, err, ftInflight(inf, name), ftCipherSize(v, name), ftCrashHistory(j, name))
				continue
			}
			if !slices.ContainsFunc(cuts, func(c int64) bool { return bytes.Equal(gotData[lo:hi], ftCrashWant(old, nw, lo, hi, c)) }) {
				bad = true
				t.Errorf("%s block %d (bytes %d-%d) is neither its acknowledged content nor its content after the operation in flight (%v)%s",
					sxShort(name), i, lo, hi, ftInflight(inf, name), ftCrashHistory(j, name))
			}
		}
		switch {
		case bad || !touched:
		case bytes.Equal(gotData, nw):
			st.outcome[inf.label+"=new"]++
		case bytes.Equal(gotData, old):
			st.outcome[inf.label+"=old"]++
		default:
			st.outcome[inf.label+"=between"]++
		}
		if firstBad >= 0 {
			// Cut the file before its first lost block, so that later
			// rounds start from a readable file.
			c := firstBad * int64(bs)
			if err := os.Truncate(v.Path(name), c); err != nil {
				t.Fatalf("truncate %s to %d after losing block %d: %v", sxShort(name), c, firstBad, err)
			}
			o.data = o.data[:c]
		}
	}
	if !walked {
		return // the model would lack what did not read
	}
	*model = *got
	st.synced = true
}

// ftCrashWant returns bytes [lo, hi) of the content a block may have
// when the in-flight operation took effect before plaintext offset cut:
// nw (zero-extended) there, old from cut on (and beyond old's end the
// bytes nw has there). cut 0 is the operation not applied, MaxInt64 all of
// it applied.
func ftCrashWant(old, nw []byte, lo, hi, cut int64) []byte {
	b := make([]byte, hi-lo)
	for j := lo; j < hi; j++ {
		switch {
		case j >= cut && j < int64(len(old)):
			b[j-lo] = old[j]
		case j < int64(len(nw)):
			b[j-lo] = nw[j]
		}
	}
	return b
}

// ftMaxWrite is the largest WRITE request of a kmsfs mount (fs: MaxWrite),
// and what max_pages (256) pages hold.
const ftMaxWrite = 1 << 20

// ftKernelSplits returns the offsets at which the kernel may cut a write(2)
// into several FUSE WRITE requests, each atomic in kmsfs but acknowledged
// only together: the daemon can finish the first and be killed before its
// reply, and write(2) then fails as a whole. A request holds at most 256
// pages. A write that starts inside a page sends that page's part alone
// when the page is not in the page cache (seen with fuse tracepoints:
// 2457 bytes, then the rest), and otherwise with the next 255 pages; each
// later request holds the next 256 pages.
func ftKernelSplits(op ftCrashOp) []int64 {
	if op.kind != "write" {
		return nil
	}
	page := int64(os.Getpagesize())
	end := op.off + int64(len(op.data))
	starts := []int64{op.off - op.off%page} // the first page goes with the rest
	var cuts []int64
	if op.off%page != 0 {
		alone := op.off - op.off%page + page // the first page goes alone
		starts = append(starts, alone)
		cuts = append(cuts, alone)
	}
	for _, s := range starts {
		for c := s + ftMaxWrite; c < end; c += ftMaxWrite {
			cuts = append(cuts, c)
		}
	}
	return cuts
}

func ftInflight(op *ftCrashOp, name string) string {
	if op == nil || op.file != name {
		return "nothing on this file"
	}
	return op.String()
}

// ftCrashHistory lists the last acknowledged operations on name, marking
// those an fsync covered.
func ftCrashHistory(j *ftJournal, name string) string {
	var ops []string
	for i := len(j.acked) - 1; i >= 0 && len(ops) < 6; i-- {
		if op := j.acked[i]; op.file == name {
			s := op.String()
			if i < j.synced[name] {
				s += " (fsync'ed)"
			}
			ops = append(ops, s)
		}
	}
	if len(ops) == 0 {
		return "; no operation acknowledged on it this round"
	}
	slices.Reverse(ops)
	return "; last acknowledged: " + strings.Join(ops, ", ")
}

// ftCipherSize describes the cipher file behind name, for messages.
func ftCipherSize(v *fusetest.CLIVolume, name string) string {
	p, err := v.MountedCipherPath(name)
	if err != nil {
		return err.Error()
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d bytes", fi.Size())
}

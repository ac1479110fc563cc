package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// goroutine writes, truncates and fsyncs files through the mount, keeping
// a journal of what returned success. It then detaches the dead mount,
// mounts again and checks every file against the journal: every file
// opens; every block reads either its content before or after the one
// operation in flight at the kill; every acknowledged operation is there.
// That last check is stricter than "fsync'ed data is there": a killed
// daemon (unlike a crashed machine) loses nothing the backing file system
// already has, and kmsfs acknowledges a write only after its pwrite. No
// block may be unreadable, not even one the operation in flight was
// writing: the write journal (journal.Journal) finishes or undoes it.
//
// Each state after verification is the next round's starting state, so
// damage a round leaves behind is found by the next.
//
// With encrypted names the writer also makes directories, creates files
// with long names (161 to 255 bytes, whose stored form needs a side file)
// in them and unlinks files, and every directory must list exactly the
// names acknowledged (give or take the one in flight) after each crash: a
// crash must never leave a name half-made, an entry without its side file
// or a directory without its ID.
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
	outcome                 map[string]int // old, new, between
	kinds                   map[string]int // of the operations in flight
	synced                  bool           // the round ended with the model matching the files
}

func ftCrashRun(t *testing.T, seed uint64, bs, rounds int, encNames bool) {
	args := []string{"--block-size", strconv.Itoa(bs)}
	stream := uint64(bs) << 32
	if encNames {
		stream |= 1 << 63 // a sequence of its own, the plaintext one unchanged
	} else {
		args = append(args, "--plaintext-names")
	}
	v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: args})
	v.MountForeground(t)
	model := map[string][]byte{}
	dirs := map[string]bool{}
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
		if !t.Run(name, func(t *testing.T) { ftCrashRound(t, v, rng, bs, delay, encNames, model, dirs, st) }) && (v.PID() == 0 || !st.synced) {
			break
		}
	}
	t.Logf("bs=%d: %d rounds in %v, %d operations acknowledged, %d in flight at the kill (%v; outcomes %v); %d files, %d directories at the end",
		bs, st.rounds, time.Since(start).Round(time.Millisecond), st.acked, st.inflight, st.kinds, st.outcome, len(model), len(dirs))
	// No file is renamed here (a directory made is renamed from its
	// temporary name before it has children), so each mount must finish every record a
	// kill left before it serves anything (a record applied only at
	// open leaves sizes from lookups stale for a moment).
	recs := regexp.MustCompile(`records=(\d+) recovered=(\d+)`).FindAllStringSubmatch(v.LogText(), -1)
	for _, m := range recs {
		if m[1] != m[2] {
			t.Errorf("a mount recovered %s of %s journal records at mount time", m[2], m[1])
		}
	}
	t.Logf("bs=%d: %d mounts found journal records to apply", bs, len(recs))
	if encNames {
		// Every name made, in every component: none may be found in the
		// cipher dir, not even in the journal the kills left behind.
		var secrets []string
		for name := range model {
			secrets = append(secrets, strings.Split(name, "/")...)
		}
		for d := range dirs {
			secrets = append(secrets, strings.Split(d, "/")...)
		}
		sxNoPlainNames(t, v.Cipher, secrets)
	}
}

func ftCrashRound(t *testing.T, v *fusetest.CLIVolume, rng *mrand.Rand, bs int, delay time.Duration, encNames bool,
	model map[string][]byte, dirs map[string]bool, st *ftCrashStats) {
	w := &ftCrashWriter{rng: rng, bs: int64(bs), encNames: encNames, fds: map[string]int{}, cur: map[string][]byte{},
		j: ftJournal{synced: map[string]int{}}}
	for d := range dirs {
		w.dirs = append(w.dirs, d)
	}
	slices.Sort(w.dirs)
	root, err := unix.Open(v.Mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open mount root: %v", err)
	}
	defer unix.Close(root)
	w.root = root
	for name, data := range model {
		fd, err := unix.Openat(root, name, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		w.fds[name] = fd
		w.cur[name] = data
		w.names = append(w.names, name)
	}
	slices.Sort(w.names)

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
	if w.j.inflight != nil && !ftConnGone(w.j.err) {
		t.Errorf("%v failed with %v after the kill; want ENOTCONN, ECONNABORTED, EIO or a short write", *w.j.inflight, w.j.err)
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
		// the names of the files and directories of the round, nowhere,
		// not in the journal the kill left pending either.
		secrets := slices.Clone(w.dirs)
		for _, name := range w.names {
			secrets = append(secrets, strings.Split(name, "/")...)
		}
		sxSearchCipherDir(t, v.Cipher, secrets, func(rel string) bool { return strings.HasPrefix(rel, "kmsfs.") })
	}
	v.MountForeground(t)

	// The acknowledged state: the round's start plus every acked op.
	acked := map[string][]byte{}
	for name, data := range model {
		acked[name] = data
	}
	for _, op := range w.j.acked {
		switch op.kind {
		case "mkdir":
			dirs[op.file] = true
		case "unlink":
			delete(acked, op.file)
		default:
			acked[op.file] = ftApply(acked[op.file], op)
		}
	}
	st.rounds++
	st.acked += len(w.j.acked)
	desc := "none"
	if w.j.inflight != nil {
		st.inflight++
		st.kinds[w.j.inflight.kind]++
		desc = w.j.inflight.String()
	}
	t.Logf("%d operations acknowledged; in flight: %s", len(w.j.acked), desc)
	ftCrashVerify(t, v, bs, acked, &w.j, model, st)
	if st.synced {
		ftCrashVerifyNames(t, v, w.j.inflight, model, dirs)
	}
}

// ftCrashVerifyNames checks that every directory lists exactly the files
// of model and the directories of dirs in it, and opens: a name half made
// or half removed by the kill (an entry without its long name's side file,
// a directory without its ID) shows as one missing, one too many or one
// that does not open. A directory whose mkdir was in flight may be there
// or not; if it is, it must list (empty), and it joins dirs.
func ftCrashVerifyNames(t *testing.T, v *fusetest.CLIVolume, inf *ftCrashOp, model map[string][]byte, dirs map[string]bool) {
	t.Helper()
	if inf != nil && inf.kind == "mkdir" {
		var st unix.Stat_t
		switch err := unix.Lstat(v.Path(inf.file), &st); {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
			dirs[inf.file] = true
		case err == nil:
			t.Errorf("%s, whose mkdir was in flight at the kill, is there but not a directory (mode %o)", sxShort(inf.file), st.Mode)
		case !ftNotExist(err):
			t.Errorf("%s, whose mkdir was in flight at the kill: %v", sxShort(inf.file), err)
		}
	}
	want := map[string][]string{"": nil}
	for d := range dirs {
		if _, ok := want[d]; !ok {
			want[d] = nil // listed even when empty
		}
		parent, base := ftSplit(d)
		want[parent] = append(want[parent], base)
	}
	for f := range model {
		parent, base := ftSplit(f)
		want[parent] = append(want[parent], base)
	}
	for dir, names := range want {
		es, err := os.ReadDir(v.Path(dir))
		if err != nil {
			t.Errorf("directory %q does not list after the crash: %v", sxShort(dir), err)
			continue
		}
		got := make([]string, 0, len(es))
		for _, e := range es {
			got = append(got, e.Name())
		}
		slices.Sort(got)
		slices.Sort(names)
		if !slices.Equal(got, names) {
			t.Errorf("directory %q lists %d names after the crash, want %d (in flight: %v); missing %q, extra %q",
				sxShort(dir), len(got), len(names), ftInflight(inf, ""), ftShortAll(ftMinus(names, got)), ftShortAll(ftMinus(got, names)))
		}
	}
}

// ftSplit splits a slash-separated name into its parent ("" for the
// root) and its last component.
func ftSplit(name string) (parent, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// ftMinus returns the names of a not in b.
func ftMinus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
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

// ftCrashVerify reads every file back through the fresh mount, checks it
// against the acknowledged state and the operation in flight, and sets
// model to what is there now.
func ftCrashVerify(t *testing.T, v *fusetest.CLIVolume, bs int, acked map[string][]byte, j *ftJournal, model map[string][]byte, st *ftCrashStats) {
	t.Helper()
	names := make([]string, 0, len(acked)+1)
	for name := range acked {
		names = append(names, name)
	}
	inf := j.inflight
	if inf != nil && acked[inf.file] == nil && inf.kind != "mkdir" && inf.kind != "unlink" {
		names = append(names, inf.file)
	}
	slices.Sort(names)
	clear(model)
	for _, name := range names {
		old := acked[name]
		nw := old
		touched := inf != nil && inf.file == name
		unlinking := touched && inf.kind == "unlink"
		if touched && !unlinking {
			nw = ftApply(old, *inf)
		}
		blocks, err := ftReadBlocks(v.Path(name), bs)
		if err != nil {
			if ftNotExist(err) && old == nil && touched {
				st.outcome["old"]++
				continue // the create in flight did not happen
			}
			if ftNotExist(err) && unlinking {
				st.outcome["new"]++
				continue // the unlink in flight happened
			}
			t.Errorf("%s does not open after the crash: %v%s", name, err, ftCrashHistory(j, name))
			continue
		}
		got := blocks.Data
		cuts := []int64{0, math.MaxInt64} // the operation in flight not done, or done
		if touched {
			cuts = append(cuts, ftKernelSplits(*inf)...)
		}
		lo, hi := min(len(old), len(nw)), max(len(old), len(nw))
		if len(got) < lo || len(got) > hi {
			t.Errorf("%s: size %d after the crash; want %d (acknowledged) or %d (with the operation in flight)%s",
				name, len(got), len(old), len(nw), ftCrashHistory(j, name))
			model[name] = got
			continue
		}
		bad, firstBad := false, int64(-1)
		for i := int64(0); i*int64(bs) < int64(len(got)); i++ {
			lo, hi := i*int64(bs), min((i+1)*int64(bs), int64(len(got)))
			if err, ok := blocks.Bad[i]; ok {
				// The write journal finishes or undoes the change in
				// flight, so not even the blocks it was writing may be
				// torn.
				if firstBad < 0 {
					firstBad = i
				}
				bad = true
				t.Errorf("%s block %d unreadable after the crash (%v); in flight: %v (cipher file: %s)%s",
					name, i, err, ftInflight(inf, name), ftCipherSize(v, name), ftCrashHistory(j, name))
				continue
			}
			if !slices.ContainsFunc(cuts, func(c int64) bool { return bytes.Equal(got[lo:hi], ftCrashWant(old, nw, lo, hi, c)) }) {
				bad = true
				t.Errorf("%s block %d (bytes %d-%d) is neither its acknowledged content nor its content after the operation in flight (%v)%s",
					name, i, lo, hi, ftInflight(inf, name), ftCrashHistory(j, name))
			}
		}
		switch {
		case bad:
		case unlinking:
			st.outcome["old"]++ // the unlink in flight did not happen
		case bytes.Equal(got, nw) && touched:
			st.outcome["new"]++
		case bytes.Equal(got, old) && touched:
			st.outcome["old"]++
		case touched:
			st.outcome["between"]++
		}
		if firstBad >= 0 {
			// Cut the file before its first lost block, so that later
			// rounds start from a readable file.
			cut := firstBad * int64(bs)
			if err := os.Truncate(v.Path(name), cut); err != nil {
				t.Fatalf("truncate %s to %d after losing block %d: %v", name, cut, firstBad, err)
			}
			got = got[:cut]
		}
		model[name] = got
	}
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

func ftNotExist(err error) bool { return mntErrno(err) == syscall.ENOENT }

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

// ftShortAll is sxShort of each of names, for messages.
func ftShortAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = sxShort(n)
	}
	return out
}

package integration_test

import (
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// sxShortWrite is a write(2) that returned fewer bytes than asked.
type sxShortWrite struct{ n, want int }

func (e *sxShortWrite) Error() string { return fmt.Sprintf("short write: %d of %d bytes", e.n, e.want) }

// ftCrashOp is one operation of the writer.
type ftCrashOp struct {
	kind   string // write, truncate, fsync, reopen, create, mkdir, unlink, rmdir, rename, exchange, link, symlink
	file   string
	to     string // rename, link: the new name
	target string // symlink
	off    int64  // write
	data   []byte // write
	size   int64  // truncate
	label  string // what the statistics count it as: kind, and for names what sort
}

func (op ftCrashOp) String() string {
	switch op.kind {
	case "write":
		return fmt.Sprintf("write %s off=%d len=%d", sxShort(op.file), op.off, len(op.data))
	case "truncate":
		return fmt.Sprintf("truncate %s size=%d", sxShort(op.file), op.size)
	case "rename", "exchange", "link":
		return fmt.Sprintf("%s %s to %s", op.label, sxShort(op.file), sxShort(op.to))
	case "symlink":
		return fmt.Sprintf("%s %s (%d-byte target)", op.label, sxShort(op.file), len(op.target))
	}
	return op.kind + " " + sxShort(op.file)
}

// ftApply returns the content of op.file after op, given its content
// before (nil if it does not exist).
func ftApply(old []byte, op ftCrashOp) []byte {
	switch op.kind {
	case "write":
		n := max(int64(len(old)), op.off+int64(len(op.data)))
		b := make([]byte, n)
		copy(b, old)
		copy(b[op.off:], op.data)
		return b
	case "truncate":
		b := make([]byte, op.size)
		copy(b, old)
		return b
	case "create":
		if old == nil {
			return []byte{}
		}
	}
	return old
}

// ftObj is a regular file or a symbolic link of an ftTree; the names of
// one hard-linked object share it. Its data is never changed in place
// (ftApply makes new slices), so clones may share it.
type ftObj struct {
	link   bool
	target string // a symlink's
	data   []byte // a file's content
}

// ftTree is what is below the mount's root, by slash-separated name.
type ftTree struct {
	ents map[string]*ftObj // files and symlinks
	dirs map[string]bool   // directories below the root
}

func newFtTree() *ftTree { return &ftTree{ents: map[string]*ftObj{}, dirs: map[string]bool{}} }

// clone returns a deep copy of t, hard links still shared.
func (t *ftTree) clone() *ftTree {
	c := &ftTree{ents: make(map[string]*ftObj, len(t.ents)), dirs: maps.Clone(t.dirs)}
	objs := map[*ftObj]*ftObj{}
	for name, o := range t.ents {
		n, ok := objs[o]
		if !ok {
			n = &ftObj{link: o.link, target: o.target, data: o.data}
			objs[o] = n
		}
		c.ents[name] = n
	}
	return c
}

// apply makes op's change to t: what the mount holds after op succeeded.
func (t *ftTree) apply(op ftCrashOp) {
	switch op.kind {
	case "write", "truncate":
		o := t.ents[op.file]
		o.data = ftApply(o.data, op)
	case "create":
		if t.ents[op.file] == nil {
			t.ents[op.file] = &ftObj{data: []byte{}}
		}
	case "mkdir":
		t.dirs[op.file] = true
	case "unlink":
		delete(t.ents, op.file)
	case "rmdir":
		if t.empty(op.file) { // else it fails with ENOTEMPTY
			delete(t.dirs, op.file)
		}
	case "symlink":
		t.ents[op.file] = &ftObj{link: true, target: op.target}
	case "link":
		t.ents[op.to] = t.ents[op.file]
	case "rename":
		t.rename(op.file, op.to)
	case "exchange":
		t.ents[op.file], t.ents[op.to] = t.ents[op.to], t.ents[op.file]
	}
}

// rename moves the entry from, and for a directory all below it, to to,
// in place of what to names (a file or symlink, or an empty directory).
func (t *ftTree) rename(from, to string) {
	if o, ok := t.ents[from]; ok {
		if t.ents[to] == o {
			return // one object under both names: rename(2) does nothing
		}
		delete(t.ents, from)
		t.ents[to] = o
		return
	}
	delete(t.dirs, from)
	t.dirs[to] = true
	for _, d := range slices.Collect(maps.Keys(t.dirs)) {
		if rest, ok := strings.CutPrefix(d, from+"/"); ok {
			delete(t.dirs, d)
			t.dirs[to+"/"+rest] = true
		}
	}
	for _, name := range slices.Collect(maps.Keys(t.ents)) {
		if rest, ok := strings.CutPrefix(name, from+"/"); ok {
			t.ents[to+"/"+rest] = t.ents[name]
			delete(t.ents, name)
		}
	}
}

// files returns the names of the regular files, sorted.
func (t *ftTree) files() []string {
	var out []string
	for name, o := range t.ents {
		if !o.link {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// names returns the names of the files and symlinks, sorted.
func (t *ftTree) names() []string { return slices.Sorted(maps.Keys(t.ents)) }

// dirList returns the directories below the root, sorted.
func (t *ftTree) dirList() []string { return slices.Sorted(maps.Keys(t.dirs)) }

// exists reports whether name is in t (the root "" always is).
func (t *ftTree) exists(name string) bool { return name == "" || t.dirs[name] || t.ents[name] != nil }

// below reports whether name is dir or below it.
func below(name, dir string) bool { return name == dir || strings.HasPrefix(name, dir+"/") }

// empty reports whether the directory dir of t has no entries.
func (t *ftTree) empty(dir string) bool {
	for name := range t.ents {
		if strings.HasPrefix(name, dir+"/") {
			return false
		}
	}
	for d := range t.dirs {
		if strings.HasPrefix(d, dir+"/") {
			return false
		}
	}
	return true
}

// ftJournal is what the writer saw: the operations that returned success,
// in order, and the one that failed (in flight at the kill).
type ftJournal struct {
	acked    []ftCrashOp
	synced   map[string]int // file: number of acked ops when it was last fsync'ed
	inflight *ftCrashOp
	err      error // what the in-flight operation returned
}

// Bounds of the name operations of a crash writer.
const (
	ftCrashMaxNamed   = 40 // files and symlinks
	ftCrashMaxDirs    = 12
	ftCrashLongName   = 161 // shortest long name drawn; its stored form needs a side file
	ftCrashMaxNameLen = 255
	// Symlink targets: short ones, and long ones past what an encrypted
	// target in a backing symlink holds, which then need a side file.
	ftCrashShortTarget = 64
	ftCrashLongTarget  = 3040
	ftCrashMaxTarget   = 4095
)

// ftCrashWriter runs operations through the mount until one fails.
type ftCrashWriter struct {
	rng  *mrand.Rand
	bs   int64
	root int            // the mount's root directory
	fds  map[string]int // open files, by name
	t    *ftTree        // the tree the acknowledged operations made
	j    ftJournal
}

func (w *ftCrashWriter) run(stop <-chan struct{}) {
	for range ftCrashMaxOps {
		select {
		case <-stop:
			return
		default:
		}
		op := w.next()
		if err := w.do(op); err != nil {
			w.j.inflight, w.j.err = &op, err
			return
		}
		w.j.acked = append(w.j.acked, op)
		if op.kind == "fsync" {
			w.j.synced[op.file] = len(w.j.acked)
		}
		w.t.apply(op)
	}
}

// fd returns the writer's descriptor of the file name, opening it if the
// writer has none (a name made by link or rename).
func (w *ftCrashWriter) fd(name string) (int, error) {
	if fd, ok := w.fds[name]; ok {
		return fd, nil
	}
	fd, err := unix.Openat(w.root, name, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		w.fds[name] = fd
	}
	return fd, err
}

// closeFd closes the writer's descriptor of name, if it has one.
func (w *ftCrashWriter) closeFd(name string) {
	if fd, ok := w.fds[name]; ok {
		unix.Close(fd)
		delete(w.fds, name)
	}
}

// do performs op. A short write is acknowledged for its written part and
// leaves the rest in flight.
func (w *ftCrashWriter) do(op ftCrashOp) error {
	switch op.kind {
	case "create", "reopen":
		w.closeFd(op.file)
		fd, err := unix.Openat(w.root, op.file, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		w.fds[op.file] = fd
		return nil
	case "mkdir":
		return unix.Mkdirat(w.root, op.file, 0o755)
	case "rmdir":
		err := unix.Unlinkat(w.root, op.file, unix.AT_REMOVEDIR)
		if err == unix.ENOTEMPTY && !w.t.empty(op.file) {
			return nil // what it must do
		}
		return err
	case "unlink":
		w.closeFd(op.file)
		return unix.Unlinkat(w.root, op.file, 0)
	case "symlink":
		return unix.Symlinkat(op.target, w.root, op.file)
	case "link":
		return unix.Linkat(w.root, op.file, w.root, op.to, 0)
	case "rename":
		if err := unix.Renameat(w.root, op.file, w.root, op.to); err != nil {
			return err
		}
		if o := w.t.ents[op.file]; o != nil && w.t.ents[op.to] == o {
			return nil // one object under both names: nothing moved
		}
		// The descriptors follow their files.
		w.closeFd(op.to)
		w.moveFds(op.file, op.to)
		return nil
	case "exchange":
		if err := unix.Renameat2(w.root, op.file, w.root, op.to, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if w.t.ents[op.file] != w.t.ents[op.to] {
			w.closeFd(op.file)
			w.closeFd(op.to)
		}
		return nil
	}
	fd, err := w.fd(op.file)
	if err != nil {
		return err
	}
	switch op.kind {
	case "fsync":
		return unix.Fsync(fd)
	case "truncate":
		return unix.Ftruncate(fd, op.size)
	}
	n, err := unix.Pwrite(fd, op.data, op.off)
	if err == nil && n < len(op.data) {
		part := op
		part.data = op.data[:n]
		w.j.acked = append(w.j.acked, part)
		w.t.apply(part)
		err = &sxShortWrite{n, len(op.data)}
	}
	return err
}

// moveFds gives the writer's descriptors of from, or of files below it,
// their names under to.
func (w *ftCrashWriter) moveFds(from, to string) {
	for name, fd := range maps.Clone(w.fds) {
		if rest, ok := strings.CutPrefix(name, from); ok && (rest == "" || rest[0] == '/') {
			delete(w.fds, name)
			w.fds[to+rest] = fd
		}
	}
}

// next draws the next operation from the writer's view of the files.
func (w *ftCrashWriter) next() ftCrashOp {
	r, bs := w.rng, w.bs
	if op, ok := w.nextName(); ok {
		return op
	}
	files := w.t.files()
	if len(files) < 2 || (len(files) < ftCrashMaxFiles && r.IntN(100) < 3) {
		k := 0
		for w.t.exists(fmt.Sprintf("f%d", k)) {
			k++
		}
		return ftCrashOp{kind: "create", label: "create", file: fmt.Sprintf("f%d", k)}
	}
	f := files[r.IntN(len(files))]
	size := int64(len(w.t.ents[f].data))
	limit := ftCrashMaxBlocks * bs
	switch p := r.IntN(100); {
	case p < 12:
		return ftCrashOp{kind: "fsync", label: "fsync", file: f}
	case p < 15:
		return ftCrashOp{kind: "reopen", label: "reopen", file: f}
	case p < 40:
		var s int64
		switch q := r.IntN(100); {
		case q < 35 && size > 1: // down, inside a block
			s = r.Int64N(size)
			if s%bs == 0 {
				s++
			}
		case q < 55 && size >= bs: // down, to a block boundary
			s = r.Int64N(size/bs) * bs
		case q < 62:
			s = 0
		default: // up
			s = size + 1 + r.Int64N(3*bs)
		}
		return ftCrashOp{kind: "truncate", label: "truncate", file: f, size: min(s, limit)}
	}
	var off, n int64
	switch q := r.IntN(100); {
	case q < 40:
		off = r.Int64N(size + 1)
	case q < 60:
		off = r.Int64N(size/bs+1) * bs
	case q < 80:
		off = size
	default: // past the end, leaving a hole
		off = size + 1 + r.Int64N(4*bs)
	}
	switch q := r.IntN(100); {
	case q < 25:
		n = 1 + r.Int64N(64)
	case q < 45:
		n = bs - 1 + r.Int64N(3)
	case q < 80:
		n = 1 + r.Int64N(4*bs)
	default:
		n = 1 + r.Int64N(12*bs)
	}
	if off+n > limit {
		return ftCrashOp{kind: "truncate", label: "truncate", file: f, size: r.Int64N(limit / 2)}
	}
	return ftCrashOp{kind: "write", label: "write", file: f, off: off, data: ftBytes(r, int(n))}
}

// nextName draws, some of the time, an operation on names: a mkdir, a
// create, symlink or hard link (half of the new names long) in the root
// or a directory, a rename of a file, symlink or directory (to a new
// name or over an existing one, in its directory or another), an rmdir
// or an unlink.
func (w *ftCrashWriter) nextName() (ftCrashOp, bool) {
	r := w.rng
	ents, dirs := w.t.names(), w.t.dirList()
	room := len(ents) < ftCrashMaxNamed
	switch p := r.IntN(100); {
	case p < 3 && len(dirs) < ftCrashMaxDirs:
		return ftCrashOp{kind: "mkdir", label: "mkdir", file: w.newName("")}, true
	case p < 8 && room:
		return ftCrashOp{kind: "create", label: "create", file: w.newName("")}, true
	case p < 12 && room:
		op := ftCrashOp{kind: "symlink", label: "symlink", file: w.newName(""), target: w.newTarget()}
		if len(op.target) >= ftCrashLongTarget {
			op.label = "symlink(long target)"
		}
		return op, true
	case p < 15 && room && len(ents) > 0:
		from := ents[r.IntN(len(ents))]
		return ftCrashOp{kind: "link", label: w.entLabel("link", from), file: from, to: w.newName("")}, true
	case p < 23 && len(ents) > 0:
		from := ents[r.IntN(len(ents))]
		op := ftCrashOp{kind: "rename", label: w.entLabel("rename", from), file: from, to: w.newName("")}
		to := ents[r.IntN(len(ents))]
		switch q := r.IntN(100); {
		case q < 40 && to != from:
			op.to, op.label = to, w.entLabel("rename", from)+" over "+w.entLabel("", to)
		case q < 55 && to != from:
			op.kind, op.to, op.label = "exchange", to, w.entLabel("exchange", from)+" with "+w.entLabel("", to)
		}
		return op, true
	case p < 26 && len(dirs) > 0:
		return w.dirRename(dirs)
	case p < 29 && len(dirs) > 0:
		var empty, full []string
		for _, d := range dirs {
			if w.t.empty(d) {
				empty = append(empty, d)
			} else {
				full = append(full, d)
			}
		}
		switch {
		case len(empty) > 0 && (len(full) == 0 || r.IntN(4) != 0):
			return ftCrashOp{kind: "rmdir", label: "rmdir", file: empty[r.IntN(len(empty))]}, true
		case len(full) > 0: // fails with ENOTEMPTY, and the directory must stay whole
			return ftCrashOp{kind: "rmdir", label: "rmdir(not empty)", file: full[r.IntN(len(full))]}, true
		}
	case p < 32 && len(ents) > 0:
		f := ents[r.IntN(len(ents))]
		if w.t.ents[f].link || len(w.t.files()) > 2 {
			return ftCrashOp{kind: "unlink", label: w.entLabel("unlink", f), file: f}, true
		}
	}
	return ftCrashOp{}, false
}

// entLabel names an operation on the entry name for the statistics: by
// kind, and whether it is on a symlink.
func (w *ftCrashWriter) entLabel(kind, name string) string {
	switch o := w.t.ents[name]; {
	case !o.link:
		return kind + "(file)"
	case len(o.target) >= ftCrashLongTarget:
		return kind + "(symlink,long target)"
	}
	return kind + "(symlink)"
}

// dirRename draws a rename of one of dirs: to a new name in a directory
// not below it, or over an empty directory neither below nor above it.
func (w *ftCrashWriter) dirRename(dirs []string) (ftCrashOp, bool) {
	r := w.rng
	from := dirs[r.IntN(len(dirs))]
	if r.IntN(2) == 0 {
		var over []string
		for _, d := range dirs {
			if !below(d, from) && !below(from, d) && w.t.empty(d) {
				over = append(over, d)
			}
		}
		if len(over) > 0 {
			return ftCrashOp{kind: "rename", label: "rename(dir,over)", file: from, to: over[r.IntN(len(over))]}, true
		}
	}
	return ftCrashOp{kind: "rename", label: "rename(dir)", file: from, to: w.newName(from)}, true
}

// newName returns a name not in use in the root or a directory of the
// tree not below not: short, or of ftCrashLongName to ftCrashMaxNameLen
// bytes.
func (w *ftCrashWriter) newName(not string) string {
	r := w.rng
	parents := []string{""}
	for _, d := range w.t.dirList() {
		if not == "" || !below(d, not) {
			parents = append(parents, d)
		}
	}
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ "
	for {
		n := 4 + r.IntN(12)
		if r.IntN(2) == 0 {
			n = ftCrashLongName + r.IntN(ftCrashMaxNameLen-ftCrashLongName+1)
		}
		b := make([]byte, n)
		b[0] = 'n' // never "." nor ".." nor a leading space
		for i := 1; i < n; i++ {
			b[i] = chars[r.IntN(len(chars))]
		}
		name := string(b)
		if p := parents[r.IntN(len(parents))]; p != "" {
			name = p + "/" + name
		}
		if !w.t.exists(name) { // a repeat of a short name is rare: the loop ends
			return name
		}
	}
}

// newTarget returns a symlink target: short, or long enough that the
// encrypted form needs a side file, or in between.
func (w *ftCrashWriter) newTarget() string {
	r := w.rng
	var n int
	switch p := r.IntN(100); {
	case p < 40:
		n = 1 + r.IntN(ftCrashShortTarget)
	case p < 60:
		n = ftCrashShortTarget + 1 + r.IntN(ftCrashLongTarget-ftCrashShortTarget-1)
	default:
		n = ftCrashLongTarget + r.IntN(ftCrashMaxTarget-ftCrashLongTarget+1)
	}
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ ./"
	b := make([]byte, n)
	b[0] = 't'
	for i := 1; i < n; i++ {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

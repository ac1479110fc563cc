package integration_test

import (
	"fmt"
	mrand "math/rand/v2"
	"slices"

	"golang.org/x/sys/unix"
)

// sxShortWrite is a write(2) that returned fewer bytes than asked.
type sxShortWrite struct{ n, want int }

func (e *sxShortWrite) Error() string { return fmt.Sprintf("short write: %d of %d bytes", e.n, e.want) }

// ftCrashOp is one operation of the writer.
type ftCrashOp struct {
	kind string // write, truncate, fsync, reopen, create, mkdir, unlink
	file string
	off  int64  // write
	data []byte // write
	size int64  // truncate
}

func (op ftCrashOp) String() string {
	switch op.kind {
	case "write":
		return fmt.Sprintf("write %s off=%d len=%d", sxShort(op.file), op.off, len(op.data))
	case "truncate":
		return fmt.Sprintf("truncate %s size=%d", sxShort(op.file), op.size)
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

// ftJournal is what the writer saw: the operations that returned success,
// in order, and the one that failed (in flight at the kill).
type ftJournal struct {
	acked    []ftCrashOp
	synced   map[string]int // file: number of acked ops when it was last fsync'ed
	inflight *ftCrashOp
	err      error // what the in-flight operation returned
}

// Bounds of the name operations of a crash writer with encrypted names.
const (
	ftCrashMaxNamed   = 40 // files
	ftCrashMaxDirs    = 12
	ftCrashLongName   = 161 // shortest long name drawn; its stored form needs a side file
	ftCrashMaxNameLen = 255
)

// ftCrashWriter runs operations through the mount until one fails.
type ftCrashWriter struct {
	rng      *mrand.Rand
	bs       int64
	encNames bool           // also make directories, long names and unlinks
	root     int            // the mount's root directory
	fds      map[string]int // open files, by name
	cur      map[string][]byte
	names    []string // cur's keys, sorted
	dirs     []string // directories below the root, sorted
	j        ftJournal
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
		switch op.kind {
		case "fsync":
			w.j.synced[op.file] = len(w.j.acked)
		case "mkdir":
			w.dirs = append(w.dirs, op.file)
			slices.Sort(w.dirs)
			continue
		case "unlink":
			delete(w.cur, op.file)
			w.names = slices.DeleteFunc(w.names, func(n string) bool { return n == op.file })
			continue
		}
		w.cur[op.file] = ftApply(w.cur[op.file], op)
		if op.kind == "create" && !slices.Contains(w.names, op.file) {
			w.names = append(w.names, op.file)
			slices.Sort(w.names)
		}
	}
}

// do performs op. A short write is acknowledged for its written part and
// leaves the rest in flight.
func (w *ftCrashWriter) do(op ftCrashOp) error {
	switch op.kind {
	case "create", "reopen":
		if fd, ok := w.fds[op.file]; ok {
			unix.Close(fd)
			delete(w.fds, op.file)
		}
		fd, err := unix.Openat(w.root, op.file, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		w.fds[op.file] = fd
		return nil
	case "mkdir":
		return unix.Mkdirat(w.root, op.file, 0o755)
	case "unlink":
		if fd, ok := w.fds[op.file]; ok {
			unix.Close(fd)
			delete(w.fds, op.file)
		}
		return unix.Unlinkat(w.root, op.file, 0)
	case "fsync":
		return unix.Fsync(w.fds[op.file])
	case "truncate":
		return unix.Ftruncate(w.fds[op.file], op.size)
	}
	n, err := unix.Pwrite(w.fds[op.file], op.data, op.off)
	if err == nil && n < len(op.data) {
		part := op
		part.data = op.data[:n]
		w.j.acked = append(w.j.acked, part)
		w.cur[op.file] = ftApply(w.cur[op.file], part)
		err = &sxShortWrite{n, len(op.data)}
	}
	return err
}

// next draws the next operation from the writer's view of the files.
func (w *ftCrashWriter) next() ftCrashOp {
	r, bs := w.rng, w.bs
	if w.encNames {
		if op, ok := w.nextName(); ok {
			return op
		}
	}
	if len(w.names) < 2 || (len(w.names) < ftCrashMaxFiles && r.IntN(100) < 3) {
		return ftCrashOp{kind: "create", file: fmt.Sprintf("f%d", len(w.names))}
	}
	f := w.names[r.IntN(len(w.names))]
	size := int64(len(w.cur[f]))
	limit := ftCrashMaxBlocks * bs
	switch p := r.IntN(100); {
	case p < 12:
		return ftCrashOp{kind: "fsync", file: f}
	case p < 15:
		return ftCrashOp{kind: "reopen", file: f}
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
		return ftCrashOp{kind: "truncate", file: f, size: min(s, limit)}
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
		return ftCrashOp{kind: "truncate", file: f, size: r.Int64N(limit / 2)}
	}
	return ftCrashOp{kind: "write", file: f, off: off, data: ftBytes(r, int(n))}
}

// nextName draws, some of the time, an operation on names: a mkdir, a
// create (half of the names long) in the root or a directory made before,
// or an unlink.
func (w *ftCrashWriter) nextName() (ftCrashOp, bool) {
	r := w.rng
	switch p := r.IntN(100); {
	case p < 4 && len(w.dirs) < ftCrashMaxDirs:
		return ftCrashOp{kind: "mkdir", file: w.newName()}, true
	case p < 12 && len(w.names) < ftCrashMaxNamed:
		return ftCrashOp{kind: "create", file: w.newName()}, true
	case p < 15 && len(w.names) > 2:
		return ftCrashOp{kind: "unlink", file: w.names[r.IntN(len(w.names))]}, true
	}
	return ftCrashOp{}, false
}

// newName returns a new name in the root or a directory of w.dirs: short,
// or of ftCrashLongName to ftCrashMaxNameLen bytes.
func (w *ftCrashWriter) newName() string {
	r := w.rng
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ "
	n := 4 + r.IntN(12)
	if r.IntN(2) == 0 {
		n = ftCrashLongName + r.IntN(ftCrashMaxNameLen-ftCrashLongName+1)
	}
	b := make([]byte, n)
	b[0] = 'n' // never "." nor ".." nor a leading space
	for i := 1; i < n; i++ {
		b[i] = chars[r.IntN(len(chars))]
	}
	if k := r.IntN(len(w.dirs) + 1); k < len(w.dirs) {
		return w.dirs[k] + "/" + string(b)
	}
	return string(b)
}

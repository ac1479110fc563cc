package integration_test

import (
	"bytes"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// Disk-full bounds: the writer stops after ftFullENOSPC refused operations,
// ftFullMaxOps operations or ftFullMaxTime, whichever comes first.
const (
	ftFullTmpfs   = "size=8m"
	ftFullENOSPC  = 60
	ftFullMaxOps  = 20000
	ftFullMaxTime = 60 * time.Second
	ftFullFiles   = 12
)

// TestDiskFull puts the cipher dir on an 8 MiB tmpfs and fills it through
// the mount with appends, overwrites, writes past the end and truncates,
// keeping a model of what each call acknowledged. Every refused call must
// fail with ENOSPC and leave its file exactly as it was (checked from the
// cipher file's size at once, and from its content at the end); after the
// disk is full every file reads back whole (no half-written block) and
// exactly as acknowledged, a file can be written again once space is
// freed, and all of it holds after a remount.
func TestDiskFull(t *testing.T) {
	seed := envSeed(t)
	for _, bs := range []int{4096, 65536} {
		t.Run(fmt.Sprintf("bs=%d", bs), func(t *testing.T) { ftDiskFull(t, seed, bs) })
	}
}

func ftDiskFull(t *testing.T, seed uint64, bs int) {
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ftFullTmpfs); err != nil {
		t.Fatalf("mount -t tmpfs -o %s: %v", ftFullTmpfs, err)
	}
	// Registered before the volume's cleanup, so it runs after it.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("umount tmpfs %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	v := suite.InitVolume(t, fusetest.CLIOptions{Cipher: dir, InitArgs: []string{"--block-size", fmt.Sprint(bs)}})
	v.MountForeground(t)
	l := ftReadLayout(t, v.Cipher)
	w := &ftFullWriter{t: t, v: v, l: l, rng: mrand.New(mrand.NewPCG(seed, uint64(bs))), model: map[string][]byte{}, back: map[string]string{}}
	w.fill()
	t.Logf("bs=%d: %d operations, %d acknowledged, %d refused with ENOSPC (%d of them changed their file), %d short writes; %d files, %d plaintext bytes stored",
		bs, w.ops, w.acked, w.enospc, w.changed, w.short, len(w.model), w.stored())
	if w.enospc == 0 {
		t.Fatalf("the tmpfs never filled up")
	}
	w.verify("when full")

	// Space freed, writing works again.
	victim := w.names()[0]
	if err := os.Remove(v.Path(victim)); err != nil {
		t.Fatalf("remove %s on a full disk: %v", victim, err)
	}
	delete(w.model, victim)
	again := ftBytes(w.rng, 3*bs+5)
	if err := os.WriteFile(v.Path("after-free"), again, 0o644); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	w.model["after-free"] = again
	w.verify("after freeing space")

	v.Remount(t)
	w.verify("after remount")
}

// ftFullWriter fills the disk and keeps the model.
type ftFullWriter struct {
	t     *testing.T
	v     *fusetest.CLIVolume
	l     ftLayout
	rng   *mrand.Rand
	model map[string][]byte
	fds   map[string]*os.File
	back  map[string]string // the backing file of each name, found once

	ops, acked, enospc, short int
	changed                   int // refused operations that changed their file
}

func (w *ftFullWriter) names() []string {
	var ns []string
	for n := range w.model {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

func (w *ftFullWriter) stored() int {
	n := 0
	for _, b := range w.model {
		n += len(b)
	}
	return n
}

func (w *ftFullWriter) fill() {
	t, r, bs := w.t, w.rng, w.l.BS
	w.fds = map[string]*os.File{}
	defer func() {
		for _, f := range w.fds {
			f.Close()
		}
	}()
	deadline := time.Now().Add(ftFullMaxTime)
	for w.enospc < ftFullENOSPC && w.ops < ftFullMaxOps && time.Now().Before(deadline) {
		var name string
		if len(w.model) < ftFullFiles && (len(w.model) < 2 || r.IntN(10) == 0) {
			name = fmt.Sprintf("f%02d", len(w.model))
			f, err := os.OpenFile(w.v.Path(name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				t.Fatalf("create %s: %v", name, err)
			}
			w.fds[name], w.model[name] = f, []byte{}
		} else {
			ns := w.names()
			name = ns[r.IntN(len(ns))]
		}
		size := int64(len(w.model[name]))
		var op ftCrashOp
		switch p := r.IntN(100); {
		case p < 45: // append
			op = ftCrashOp{kind: "write", file: name, off: size, data: ftBytes(r, 1+r.IntN(int(2*bs)+60000))}
		case p < 60 && size > 0: // overwrite inside, in part of a block
			off := r.Int64N(size)
			op = ftCrashOp{kind: "write", file: name, off: off, data: ftBytes(r, 1+r.IntN(int(bs)))}
		case p < 75: // past the end, leaving a hole after a partial block
			op = ftCrashOp{kind: "write", file: name, off: size + 1 + r.Int64N(3*bs), data: ftBytes(r, 1+r.IntN(100))}
		case p < 88: // truncate up
			op = ftCrashOp{kind: "truncate", file: name, size: size + 1 + r.Int64N(3*bs)}
		default: // truncate down by up to two blocks: frees a little space
			op = ftCrashOp{kind: "truncate", file: name, size: size - r.Int64N(min(size, 2*bs)+1)}
		}
		w.do(op)
	}
}

// do performs op, applies what was acknowledged to the model, and checks
// at once that a refused operation left the file's size alone.
func (w *ftFullWriter) do(op ftCrashOp) {
	t := w.t
	w.ops++
	f := w.fds[op.file]
	var err error
	switch op.kind {
	case "write":
		var n int
		n, err = unix.Pwrite(int(f.Fd()), op.data, op.off)
		if n > 0 {
			part := op
			part.data = op.data[:n]
			w.model[op.file] = ftApply(w.model[op.file], part)
		}
		if err == nil && n < len(op.data) {
			w.short++
			return
		}
	case "truncate":
		err = f.Truncate(op.size)
		if err == nil {
			w.model[op.file] = ftApply(w.model[op.file], op)
		}
	}
	if err == nil {
		w.acked++
		return
	}
	if mntErrno(err) != syscall.ENOSPC {
		t.Fatalf("%v: got %v, want success or ENOSPC", op, err)
	}
	w.enospc++
	if got, want := w.plainSize(op.file), int64(len(w.model[op.file])); got != want {
		w.changed++
		t.Errorf("%v failed with ENOSPC but changed the file: its cipher file now holds %d plaintext bytes, want %d (unchanged)",
			op, got, want)
		// Follow the file (kmsfs pads with zeros), so that later checks
		// report only their own operation.
		w.model[op.file] = ftApply(w.model[op.file], ftCrashOp{kind: "truncate", size: got})
	}
}

// plainSize returns the plaintext size that name's cipher file implies
// (docs/FORMAT.md), free of the kernel's attribute cache. The volume must
// be mounted the first time a name is asked for: its backing file is found
// through the mount (names are stored encrypted) and kept.
func (w *ftFullWriter) plainSize(name string) int64 {
	p, ok := w.back[name]
	if !ok {
		p = w.v.BackingPath(w.t, name)
		w.back[name] = p
	}
	fi, err := os.Stat(p)
	if err != nil {
		w.t.Fatal(err)
	}
	c, l := fi.Size(), w.l
	if c <= l.H {
		return 0
	}
	full := (c - l.H) / (l.BS + 32)
	return full*l.BS + max(0, (c-l.H)%(l.BS+32)-32)
}

// verify reads every file block by block and compares it with the model.
func (w *ftFullWriter) verify(when string) {
	t := w.t
	t.Helper()
	for _, name := range w.names() {
		want := w.model[name]
		if got := w.plainSize(name); got != int64(len(want)) {
			t.Errorf("%s %s: cipher file holds %d plaintext bytes, %d acknowledged", when, name, got, len(want))
			continue
		}
		blocks, err := ftReadBlocks(w.v.Path(name), int(w.l.BS))
		if err != nil {
			t.Errorf("%s: open %s: %v", when, name, err)
			continue
		}
		for i, err := range blocks.Bad {
			t.Errorf("%s: %s block %d does not read: %v", when, name, i, err)
		}
		if len(blocks.Bad) == 0 && !bytes.Equal(blocks.Data, want) {
			t.Errorf("%s: %s: %s", when, name, mntDiff(blocks.Data, want))
		}
	}
}

package integration_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// mntTreeEntry is what a tree test expects at one path.
type mntTreeEntry struct {
	kind   fs.FileMode // 0 (regular), fs.ModeDir or fs.ModeSymlink
	size   int64
	sum    [32]byte
	target string // symlinks
	linkOf string // hard links: the path this one is a link of
}

// mntTreeFile is a regular file to write: size bytes of seeded random
// data, or, when islands is set, a sparse file of that size holding data
// only in the islands (offset -> length).
type mntTreeFile struct {
	name    string
	size    int64
	islands map[int64]int64
}

// TestMountMixedTree writes a tree of over 200 MB through a mount —
// thousands of small files in nested dirs, medium files, large dense and
// sparse files, empty files and dirs, symlinks and hard links — then
// unmounts, remounts and compares every entry and the SHA-256 of every
// file with what was written.
func TestMountMixedTree(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	files, links, dirs := mntTreePlan()
	want := map[string]mntTreeEntry{}
	for _, d := range dirs {
		if err := os.MkdirAll(v.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
		want[d] = mntTreeEntry{kind: fs.ModeDir}
	}
	var total int64
	tw := &mntTreeWriter{rng: rand.NewChaCha8([32]byte{'k', 'm', 's', 'f', 's'}), buf: make([]byte, 1<<20)}
	for _, f := range files {
		e, n, err := tw.write(v.Path(f.name), f)
		if err != nil {
			t.Fatalf("write %s: %v", f.name, err)
		}
		want[f.name] = e
		total += n
	}
	if total < 200<<20 {
		t.Fatalf("bad test: the tree holds %d bytes of data, want at least 200 MiB", total)
	}
	for name, target := range links.sym {
		if err := os.Symlink(target, v.Path(name)); err != nil {
			t.Fatal(err)
		}
		want[name] = mntTreeEntry{kind: fs.ModeSymlink, target: target, size: int64(len(target))}
	}
	for name, of := range links.hard {
		if err := os.Link(v.Path(of), v.Path(name)); err != nil {
			t.Fatal(err)
		}
		e := want[of]
		e.linkOf = of
		want[name] = e
	}

	v.Remount(t)

	got := map[string]fs.FileInfo{}
	err := filepath.WalkDir(v.Mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == v.Mnt {
			return err
		}
		rel, _ := filepath.Rel(v.Mnt, p)
		fi, err := d.Info()
		got[filepath.ToSlash(rel)] = fi
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mntCompareTreeNames(t, want, got)
	for _, name := range mntSortedKeys(want) {
		w, fi := want[name], got[name]
		if fi.Mode().Type() != w.kind {
			t.Errorf("%s: type %v, want %v", name, fi.Mode().Type(), w.kind)
			continue
		}
		switch w.kind {
		case fs.ModeSymlink:
			if target, err := os.Readlink(v.Path(name)); err != nil || target != w.target || fi.Size() != w.size {
				t.Errorf("%s: link to %q (size %d, %v), want %q", name, target, fi.Size(), err, w.target)
			}
		case 0:
			if fi.Size() != w.size {
				t.Errorf("%s: size %d, want %d", name, fi.Size(), w.size)
				continue
			}
			if sum, err := mntSumFile(v.Path(name), tw.buf); err != nil || sum != w.sum {
				t.Errorf("%s: SHA-256 %x (%v), want %x", name, sum, err, w.sum)
			}
			if w.linkOf != "" {
				a, b := fi.Sys().(*syscall.Stat_t), got[w.linkOf].Sys().(*syscall.Stat_t)
				if a.Ino != b.Ino || a.Nlink != 2 {
					t.Errorf("%s: inode %d nlink %d, want the inode %d of %s with nlink 2", name, a.Ino, a.Nlink, b.Ino, w.linkOf)
				}
			}
		}
	}
	// Holes stay holes in the cipher dir.
	for _, f := range files {
		if f.islands == nil {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(mntCipherOf(t, v, f.name), &st); err != nil {
			t.Fatal(err)
		}
		var data int64
		for _, n := range f.islands {
			data += n
		}
		if used := st.Blocks * 512; used > 2*data+(4<<20) {
			t.Errorf("%s: cipher file uses %d bytes on disk for %d bytes of data in %d: holes were written out", f.name, used, data, f.size)
		}
	}
}

// mntTreeLinks are the links of a tree: symlink name -> target, and hard
// link name -> existing file.
type mntTreeLinks struct{ sym, hard map[string]string }

// mntTreePlan lays out the tree, the same for every run.
func mntTreePlan() ([]mntTreeFile, mntTreeLinks, []string) {
	rng := rand.New(rand.NewPCG(4, 2))
	var files []mntTreeFile
	var dirs []string
	// 8 x 5 nested dirs of 50 small files, sizes around the block size.
	boundary := []int64{0, 1, 4095, 4096, 4097, 8191, 8192, 8193}
	for i := range 8 {
		for j := range 5 {
			d := fmt.Sprintf("small/d%d/e%d", i, j)
			if j > 2 {
				d = fmt.Sprintf("small/d%d/e%d/deeper/still", i, j)
			}
			dirs = append(dirs, d)
			for k := range 50 {
				size := rng.Int64N(12 << 10)
				if k < len(boundary) {
					size = boundary[k]
				}
				files = append(files, mntTreeFile{name: fmt.Sprintf("%s/f%02d", d, k), size: size})
			}
		}
	}
	dirs = append(dirs, "medium", "large", "empty/a/b", "empty/c", "links")
	for k := range 30 {
		files = append(files, mntTreeFile{name: fmt.Sprintf("medium/m%02d", k), size: 100<<10 + rng.Int64N(2<<20)})
	}
	for k := range 3 {
		files = append(files, mntTreeFile{name: fmt.Sprintf("large/dense%d", k), size: 60<<20 + int64(k)*4097})
	}
	files = append(files,
		mntTreeFile{name: "large/sparse-far", size: 256 << 20, islands: map[int64]int64{0: 10, 100 << 20: 1 << 20, 256<<20 - 5: 5}},
		mntTreeFile{name: "large/sparse-mid", size: 64<<20 + 1, islands: map[int64]int64{32<<20 - 2: 4, 40<<20 + 7: 70000}},
		mntTreeFile{name: "large/sparse-only", size: 16 << 20, islands: map[int64]int64{}},
	)
	for k := range 10 {
		files = append(files, mntTreeFile{name: fmt.Sprintf("empty/e%d", k)})
	}
	links := mntTreeLinks{
		sym: map[string]string{
			"links/to-file":     "../medium/m00",
			"links/to-dir":      "../small/d1",
			"links/absolute":    "/etc/hostname",
			"links/dangling":    "no/such/file",
			"small/d0/e0/local": "f01",
		},
		hard: map[string]string{
			"links/hard-small":  "small/d2/e1/f10",
			"links/hard-medium": "medium/m03",
			"empty/hard-large":  "large/dense1",
			"small/d7/e4/hard":  "small/d0/e0/f20",
		},
	}
	return files, links, dirs
}

// mntTreeWriter writes tree files from seeded random data.
type mntTreeWriter struct {
	rng io.Reader
	buf []byte
}

// write writes f at p and returns its entry and the bytes of data written.
func (w *mntTreeWriter) write(p string, f mntTreeFile) (mntTreeEntry, int64, error) {
	out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return mntTreeEntry{}, 0, err
	}
	defer out.Close()
	h := sha256.New()
	rng, buf := w.rng, w.buf
	var written int64
	if f.islands == nil {
		for written < f.size {
			chunk := buf[:min(int64(len(buf)), f.size-written)]
			rng.Read(chunk)
			h.Write(chunk)
			if _, err := out.Write(chunk); err != nil {
				return mntTreeEntry{}, written, err
			}
			written += int64(len(chunk))
		}
		return mntTreeEntry{size: f.size, sum: [32]byte(h.Sum(nil))}, written, out.Close()
	}
	// Sparse: size first, then the islands in place; the plaintext is
	// zeros elsewhere.
	if err := out.Truncate(f.size); err != nil {
		return mntTreeEntry{}, 0, err
	}
	plain := map[int64][]byte{}
	for off, n := range f.islands {
		b := make([]byte, n)
		rng.Read(b)
		if _, err := out.WriteAt(b, off); err != nil {
			return mntTreeEntry{}, written, err
		}
		plain[off] = b
		written += n
	}
	var pos int64
	for _, off := range mntSortedKeys(plain) {
		mntHashZeros(h, off-pos, buf)
		h.Write(plain[off])
		pos = off + int64(len(plain[off]))
	}
	mntHashZeros(h, f.size-pos, buf)
	return mntTreeEntry{size: f.size, sum: [32]byte(h.Sum(nil))}, written, out.Close()
}

func mntHashZeros(h io.Writer, n int64, buf []byte) {
	clear(buf)
	for n > 0 {
		k := min(n, int64(len(buf)))
		h.Write(buf[:k])
		n -= k
	}
}

// mntSumFile returns the SHA-256 of the file at p, read with buf.
func mntSumFile(p string, buf []byte) ([32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			return [32]byte(h.Sum(nil)), nil
		}
		if err != nil {
			return [32]byte{}, err
		}
	}
}

// mntCompareTreeNames fails the test unless got names exactly the paths
// of want (and the directories that lead to them).
func mntCompareTreeNames(t *testing.T, want map[string]mntTreeEntry, got map[string]fs.FileInfo) {
	t.Helper()
	for name := range want {
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if _, ok := want[filepath.ToSlash(d)]; !ok {
				want[filepath.ToSlash(d)] = mntTreeEntry{kind: fs.ModeDir}
			}
		}
	}
	var missing, extra []string
	for name := range want {
		if _, ok := got[name]; !ok {
			missing = append(missing, name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			extra = append(extra, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("after remount: missing %v, unexpected %v", missing, extra)
	}
}

// mntSortedKeys returns m's keys in order.
func mntSortedKeys[K int64 | string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

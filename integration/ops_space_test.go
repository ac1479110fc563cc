package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsFallocate checks fallocate: mode 0 extends the size (zeros),
// KEEP_SIZE keeps it and reserves backing space, and neither changes
// existing content.
func TestOpsFallocate(t *testing.T) {
	v := mntOps(t)
	for _, c := range []struct {
		name           string
		mode           uint32
		off, n         int64
		before, expect int64 // sizes
	}{
		{"mode=0,extend", 0, 0, 100000, 10, 100000},
		{"mode=0,beyond-end", 0, 200000, 5000, 10, 205000},
		{"mode=0,inside", 0, 2, 3, 10, 10},
		{"mode=0,unaligned", 0, 4095, 2, 4097, 4097},
		{"mode=keep-size,beyond-end", unix.FALLOC_FL_KEEP_SIZE, 0, 1 << 20, 10, 10},
		{"mode=keep-size,empty-file", unix.FALLOC_FL_KEEP_SIZE, 0, 65536, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := "falloc-" + c.name
			data := mntRandom(uint64(c.before), int(c.before))
			mntWriteFile(t, v.Path(name), data)
			f := mntOpen(t, v.Path(name), os.O_RDWR, 0)
			if err := unix.Fallocate(int(f.Fd()), c.mode, c.off, c.n); err != nil {
				t.Fatalf("fallocate: %v", err)
			}
			if st := mntLstat(t, v.Path(name)); st.Size != c.expect {
				t.Fatalf("size %d after fallocate, want %d", st.Size, c.expect)
			}
			want := append(data, make([]byte, c.expect-c.before)...)
			mntCheckFile(t, v.Path(name), want)
			if c.mode&unix.FALLOC_FL_KEEP_SIZE != 0 {
				// The range is reserved in the cipher file.
				var st unix.Stat_t
				if err := unix.Stat(v.BackingPath(t, name), &st); err != nil {
					t.Fatal(err)
				}
				if st.Blocks*512 < c.n {
					t.Errorf("cipher file has %d bytes allocated after reserving %d", st.Blocks*512, c.n)
				}
				// A write into the reserved range extends as usual.
				if _, err := f.WriteAt([]byte("w"), 1000); err != nil {
					t.Fatal(err)
				}
				want = append(want, make([]byte, 1001-len(want))...)
				want[1000] = 'w'
			}
			f.Close()
			v.Remount(t)
			mntCheckFile(t, v.Path(name), want)
		})
	}
	t.Run("punch-hole", func(t *testing.T) {
		// Not supported, or done right: the range reads as zeros.
		data := mntRandom(9, 3*4096)
		mntWriteFile(t, v.Path("punch"), data)
		f := mntOpen(t, v.Path("punch"), os.O_RDWR, 0)
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 100, 5000)
		if err != nil {
			mntWantErrno(t, "punch hole", err, syscall.EOPNOTSUPP)
			mntCheckFile(t, v.Path("punch"), data)
			return
		}
		clear(data[100:5100])
		mntCheckFile(t, v.Path("punch"), data)
	})
}

// TestOpsLseek checks SEEK_DATA and SEEK_HOLE on a sparse file: answers
// within what POSIX allows (data may be reported over a hole, never a
// hole over data), ENXIO at and past the end, and the file offset moved.
func TestOpsLseek(t *testing.T) {
	v := mntOps(t)
	const far = 1 << 20
	p := v.Path("sparse")
	f := mntOpen(t, p, os.O_CREATE|os.O_RDWR, 0o644)
	if _, err := f.WriteAt([]byte("0123456789"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("far data"), far); err != nil {
		t.Fatal(err)
	}
	const size = far + 8
	empty := mntOpen(t, v.Path("empty"), os.O_CREATE|os.O_RDWR, 0o644)
	for _, c := range []struct {
		name     string
		f        *os.File
		whence   int
		off      int64
		lo, hi   int64 // the answer lies in [lo, hi]
		wantENXI bool
	}{
		{"data,off=0", f, unix.SEEK_DATA, 0, 0, 0, false},
		{"data,off=5", f, unix.SEEK_DATA, 5, 5, 5, false},
		{"data,in-hole", f, unix.SEEK_DATA, 5000, 5000, far, false},
		{"data,far", f, unix.SEEK_DATA, far + 3, far + 3, far + 3, false},
		{"hole,off=0", f, unix.SEEK_HOLE, 0, 10, size, false},
		{"hole,in-hole", f, unix.SEEK_HOLE, 5000, 5000, size, false},
		{"hole,last-byte", f, unix.SEEK_HOLE, size - 1, size, size, false},
		{"data,at-end", f, unix.SEEK_DATA, size, 0, 0, true},
		{"hole,at-end", f, unix.SEEK_HOLE, size, 0, 0, true},
		{"data,past-end", f, unix.SEEK_DATA, size + 100, 0, 0, true},
		{"data,empty-file", empty, unix.SEEK_DATA, 0, 0, 0, true},
		{"hole,empty-file", empty, unix.SEEK_HOLE, 0, 0, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := unix.Seek(int(c.f.Fd()), c.off, c.whence)
			if c.wantENXI {
				mntWantErrno(t, "seek", err, syscall.ENXIO)
				return
			}
			if err != nil || got < c.lo || got > c.hi {
				t.Fatalf("seek to %d: %d, %v; want [%d, %d]", c.off, got, err, c.lo, c.hi)
			}
			if pos, _ := unix.Seek(int(c.f.Fd()), 0, unix.SEEK_CUR); pos != got {
				t.Fatalf("file offset %d after seeking to %d", pos, got)
			}
		})
	}
	t.Run("read-after-seek-data", func(t *testing.T) {
		if _, err := unix.Seek(int(f.Fd()), far, unix.SEEK_DATA); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if n, err := f.Read(buf); err != nil || string(buf[:n]) != "far data" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		if end, err := f.Seek(0, 2); err != nil || end != size {
			t.Fatalf("SEEK_END: %d, %v, want %d", end, err, size)
		}
	})
}

// TestOpsMmapShared writes through a MAP_SHARED mapping across block
// boundaries, syncs it, and reads it back with read(), from another
// handle, and after a remount.
func TestOpsMmapShared(t *testing.T) {
	v := mntOps(t)
	p := v.Path("mapped")
	const size = 10000
	want := mntRandom(10, size)
	mntWriteFile(t, p, want)
	f := mntOpen(t, p, os.O_RDWR, 0)
	other := mntOpen(t, p, os.O_RDONLY, 0)
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	if !bytes.Equal(m, want) {
		t.Fatalf("mapping: %s", mntDiff(m, want))
	}
	for _, off := range []int{0, 4095, 4096, 8191, 8192, size - 1} {
		m[off] ^= 0xff
		want[off] ^= 0xff
	}
	copy(m[5000:], "written through the mapping")
	copy(want[5000:], "written through the mapping")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	buf := make([]byte, size)
	if _, err := other.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("read() after msync: %s (%v)", mntDiff(buf, want), err)
	}
	// A write() is seen by the mapping.
	if _, err := f.WriteAt([]byte("via write"), 100); err != nil {
		t.Fatal(err)
	}
	copy(want[100:], "via write")
	if !bytes.Equal(m, want) {
		t.Fatalf("mapping after write(): %s", mntDiff(m, want))
	}
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
	other.Close()
	f.Close()
	v.Remount(t)
	mntCheckFile(t, p, want)
}

// TestOpsTwoHandles checks that two handles of one file see each other's
// writes and size changes at once, also within one block, and that
// concurrent writers of the same blocks through different handles lose
// nothing.
func TestOpsTwoHandles(t *testing.T) {
	v := mntOps(t)
	p := v.Path("two")
	a := mntOpen(t, p, os.O_CREATE|os.O_RDWR, 0o644)
	b := mntOpen(t, p, os.O_RDWR, 0)
	check := func(f *os.File, want string) {
		t.Helper()
		buf := make([]byte, len(want)+10)
		n, _ := f.ReadAt(buf, 0)
		if string(buf[:n]) != want {
			t.Fatalf("handle reads %q, want %q", buf[:n], want)
		}
	}
	steps := []struct {
		by, other *os.File
		do        func(*os.File) error
		want      string
	}{
		{a, b, func(f *os.File) error { _, err := f.WriteAt([]byte("aaaa"), 0); return err }, "aaaa"},
		{b, a, func(f *os.File) error { _, err := f.WriteAt([]byte("bb"), 1); return err }, "abba"},
		{a, b, func(f *os.File) error { _, err := f.WriteAt([]byte("!"), 4100); return err }, "abba" + string(make([]byte, 4096)) + "!"},
		{b, a, func(f *os.File) error { return f.Truncate(2) }, "ab"},
		{a, b, func(f *os.File) error { _, err := f.WriteAt([]byte("c"), 2); return err }, "abc"},
	}
	for i, s := range steps {
		if err := s.do(s.by); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		check(s.other, s.want)
		check(s.by, s.want)
		var st unix.Stat_t
		if err := unix.Fstat(int(s.other.Fd()), &st); err != nil || st.Size != int64(len(s.want)) {
			t.Fatalf("step %d: the other handle's size %d (%v), want %d", i, st.Size, err, len(s.want))
		}
	}
	t.Run("concurrent-same-blocks", func(t *testing.T) {
		// Each round, a writes the first half of a 100-byte stripe and b
		// the second, so every 4 KiB block is written by both at once.
		const stripes, stripe = 400, 100
		if err := a.Truncate(0); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for h, f := range []*os.File{a, b} {
			wg.Go(func() {
				for i := range stripes {
					chunk := bytes.Repeat([]byte{byte('A' + h)}, stripe/2)
					if _, err := f.WriteAt(chunk, int64(i*stripe+h*stripe/2)); err != nil {
						errs <- fmt.Errorf("handle %d stripe %d: %w", h, i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		want := bytes.Repeat(append(bytes.Repeat([]byte("A"), stripe/2), bytes.Repeat([]byte("B"), stripe/2)...), stripes)
		a.Close()
		b.Close()
		mntCheckFile(t, p, want)
		v.Remount(t)
		mntCheckFile(t, p, want)
	})
}

package fs_test

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/metrics"
)

// stubRaw answers READ and WRITE at once, so that what is measured around
// it is the observer's cost alone.
type stubRaw struct {
	fuse.RawFileSystem
	res fuse.ReadResult // made once: a result made per call would allocate
}

func (s *stubRaw) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	return s.res, fuse.OK
}

func (s *stubRaw) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	return uint32(len(data[0])), fuse.OK
}

func newStub() *stubRaw {
	return &stubRaw{RawFileSystem: fuse.NewDefaultRawFileSystem(), res: fuse.ReadResultData(make([]byte, 4096))}
}

// TestObservedAllocs checks that observing a READ or a WRITE, with the
// Prometheus metrics behind, allocates nothing.
func TestObservedAllocs(t *testing.T) {
	raw := fs.Observed(newStub(), metrics.New())
	buf := make([]byte, 4096)
	in, win := &fuse.ReadIn{Size: 4096}, &fuse.WriteIn{Size: 4096}
	iov := [][]byte{buf}
	for _, tc := range []struct {
		op string
		f  func()
	}{
		{"read", func() { raw.Read(nil, in, buf) }},
		{"write", func() { raw.Writev(nil, win, iov) }},
	} {
		t.Run("op="+tc.op, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
				t.Errorf("%v allocations per request, want 0", n)
			}
		})
	}
}

// BenchmarkObservedRead measures what metrics add to a READ that costs
// nothing else.
func BenchmarkObservedRead(b *testing.B) {
	buf := make([]byte, 4096)
	in := &fuse.ReadIn{Size: 4096}
	for _, tc := range []struct {
		name string
		raw  fuse.RawFileSystem
	}{
		{"metrics=off", newStub()},
		{"metrics=on", fs.Observed(newStub(), metrics.New())},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tc.raw.Read(nil, in, buf)
			}
		})
	}
}

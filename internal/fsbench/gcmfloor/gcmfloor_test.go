package gcmfloor_test

import (
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/fsbench/gcmfloor"
)

// maxRate bounds any AES-GCM on one core from above, in bytes per CPU
// second: a floor below 1/maxRate s/GiB means the blocks were not opened.
const maxRate = 200e9

func TestMeasure(t *testing.T) {
	st, err := envelope.GCM()
	if err != nil {
		t.Fatal(err)
	}
	want := gcmfloor.ImplStd
	if st.Wide {
		want = gcmfloor.ImplWide
	}
	for _, tt := range []struct {
		block, req int
		total      int64
	}{
		{4096, 1 << 20, 64 << 20},
		{65536, 1 << 20, 64 << 20},
		{4096, 4096, 16 << 20},
	} {
		t.Run(fmt.Sprintf("bs=%d,req=%d,total=%d", tt.block, tt.req, tt.total), func(t *testing.T) {
			r, err := gcmfloor.Measure(tt.block, tt.req, tt.total)
			if err != nil {
				t.Fatal(err)
			}
			if r.Impl != want || (r.Impl == gcmfloor.ImplStd) != (r.Reason != "") {
				t.Errorf("implementation %q (reason %q), envelope uses %q (reason %q)", r.Impl, r.Reason, want, st.Reason)
			}
			if r.Bytes != tt.total || r.BlockSize != tt.block || r.RequestSize != tt.req {
				t.Errorf("opened %d bytes in requests of %d, blocks of %d; want %d, %d, %d", r.Bytes, r.RequestSize, r.BlockSize, tt.total, tt.req, tt.block)
			}
			t.Logf("%s: %.3f CPU-s per GiB", r.Impl, r.PerGiB())
			if min := float64(gcmfloor.GiB) / maxRate; r.PerGiB() < min {
				t.Errorf("%.4f CPU-s per GiB (%.6f CPU-s for %d bytes), below %.4f: the blocks were not all opened", r.PerGiB(), r.CPUSeconds, r.Bytes, min)
			}
		})
	}
}

func TestMeasureRefusesSizes(t *testing.T) {
	for _, tt := range []struct {
		block, req int
		total      int64
	}{
		{4096, 0, 1 << 20},
		{4096, 6000, 6000},
		{4096, 1 << 20, 0},
		{4096, 1 << 20, 1<<20 + 4096},
		{0, 4096, 4096},
		{3000, 6000, 6000}, // not a block size a layout takes
	} {
		t.Run(fmt.Sprintf("bs=%d,req=%d,total=%d", tt.block, tt.req, tt.total), func(t *testing.T) {
			if r, err := gcmfloor.Measure(tt.block, tt.req, tt.total); err == nil {
				t.Errorf("measured %+v, want an error", r)
			}
		})
	}
}

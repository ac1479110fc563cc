package envelope_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
)

var (
	diffSeed = flag.Uint64("seed", 0, "seed for TestDifferential (0: from the clock)")
	diffOps  = flag.Int("ops", 20000, "operations per TestDifferential case")
)

// TestDifferential runs random writes, reads, truncates (up and down) and
// reopens against an in-memory reference and fails on the first
// difference. The seed is printed on failure; -seed reproduces a run.
func TestDifferential(t *testing.T) {
	for _, bs := range []int{4 << 10, 64 << 10} {
		for _, mode := range []string{"serial", "parallel"} {
			t.Run(fmt.Sprintf("bs=%d,%s", bs, mode), func(t *testing.T) {
				t.Parallel()
				seed := *diffSeed
				if seed == 0 {
					seed = uint64(time.Now().UnixNano())
				}
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("reproduce: go test ./envelope -run 'TestDifferential/bs=%d,%s' -seed=%d", bs, mode, seed)
					}
				})
				runDifferential(t, bs, mode == "parallel", seed, *diffOps)
			})
		}
	}
}

func runDifferential(t *testing.T, bs int, parallel bool, seed uint64, ops int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	v := newVolume(t, bs, func(o *envelope.Options) {
		o.Workers = 2
		o.ParallelMin = -1
		if parallel {
			o.ParallelMin = 2 * bs // exercise the split on small requests too
		}
	})
	f, backing := newFile(t, v, dataKey(7))
	var model []byte
	maxSize := 12 * bs

	// length picks sizes around block boundaries more often than chance.
	length := func() int {
		switch rng.IntN(4) {
		case 0:
			return 1 + rng.IntN(16)
		case 1:
			return max(1, rng.IntN(3)*bs+rng.IntN(3)-1)
		default:
			return 1 + rng.IntN(3*bs)
		}
	}
	offset := func(limit int) int {
		if rng.IntN(3) == 0 {
			return max(0, rng.IntN(limit/bs+1)*bs+rng.IntN(3)-1)
		}
		return rng.IntN(limit + 1)
	}
	for op := 0; op < ops; op++ {
		switch k := rng.IntN(100); {
		case k < 40: // write, sometimes past the end leaving a hole
			off := offset(min(len(model)+2*bs, maxSize))
			p := make([]byte, length())
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			n, err := f.WriteAt(p, int64(off))
			if err != nil || n != len(p) {
				t.Fatalf("op %d: WriteAt(len=%d, off=%d) = %d, %v", op, len(p), off, n, err)
			}
			if end := off + len(p); end > len(model) {
				model = append(model, make([]byte, end-len(model))...)
			}
			copy(model[off:], p)
		case k < 75: // read
			off := offset(len(model) + bs)
			p := make([]byte, length())
			n, err := f.ReadAt(p, int64(off))
			want := 0
			if off < len(model) {
				want = min(len(p), len(model)-off)
			}
			if n != want || (want < len(p) && err != io.EOF) || (want == len(p) && err != nil) {
				t.Fatalf("op %d: ReadAt(len=%d, off=%d) on size %d = %d, %v; want %d", op, len(p), off, len(model), n, err, want)
			}
			if n > 0 && !bytes.Equal(p[:n], model[off:off+n]) {
				t.Fatalf("op %d: ReadAt(len=%d, off=%d): content differs", op, len(p), off)
			}
		case k < 88: // truncate up or down
			size := offset(maxSize)
			if rng.IntN(8) == 0 {
				size = 0
			}
			if err := f.Truncate(int64(size)); err != nil {
				t.Fatalf("op %d: Truncate(%d): %v", op, size, err)
			}
			if size > len(model) {
				model = append(model, make([]byte, size-len(model))...)
			}
			model = model[:size]
		case k < 94: // reopen: the size and content must come from the stored bytes
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			f = reopen(t, v, backing)
			if f.Size() != int64(len(model)) {
				t.Fatalf("op %d: reopened size %d, want %d", op, f.Size(), len(model))
			}
		default: // whole-file compare
			got := make([]byte, len(model)+1)
			n, err := f.ReadAt(got, 0)
			if n != len(model) || !errors.Is(err, io.EOF) || !bytes.Equal(got[:n], model) {
				t.Fatalf("op %d: full read of %d bytes = %d, %v (content equal: %v)", op, len(model), n, err, bytes.Equal(got[:n], model))
			}
		}
		if f.Size() != int64(len(model)) {
			t.Fatalf("op %d: size %d, want %d", op, f.Size(), len(model))
		}
	}
	if got, want := int64(len(backing.Bytes())), v.Layout().CipherSize(int64(len(model))); got != want {
		t.Fatalf("cipher file is %d bytes, want %d", got, want)
	}
}

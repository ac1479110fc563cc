package integration_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// BenchmarkFsck compares kmsfs fsck of a volume with reading the same
// volume through a mount, both reported in plaintext MB/s. The volume is
// 1 GiB by default (KMSFS_FSCK_BENCH_MIB sets it): four large files and
// 256 small ones of 256 KiB, written through the mount once. Each mount
// read starts from a fresh mount (the kernel's page cache of the mount is
// empty); the cipher files stay in the host's page cache for both, unless
// KMSFS_BENCH_DROP_CACHES=1 drops it before every round (needs root).
//
//	make build && CI=true go test -run '^$' -bench Fsck -benchtime 3x ./integration/
func BenchmarkFsck(b *testing.B) {
	mib := int64(1024)
	if s := os.Getenv("KMSFS_FSCK_BENCH_MIB"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 8 {
			b.Fatalf("KMSFS_FSCK_BENCH_MIB=%q: want a number of MiB, at least 8", s)
		}
		mib = n
	}
	v := suite.StartVolume(b, fusetest.CLIOptions{})
	names, total := fsckBenchVolume(b, v, mib<<20)
	drop := os.Getenv("KMSFS_BENCH_DROP_CACHES") == "1"
	cold := func(b *testing.B) {
		b.Helper()
		if !drop {
			return
		}
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
			b.Fatalf("drop caches: %v", err)
		}
	}

	b.Run("read=mount", func(b *testing.B) {
		b.SetBytes(total)
		buf := make([]byte, 1<<20)
		for b.Loop() {
			b.StopTimer()
			v.Remount(b)
			cold(b)
			b.StartTimer()
			var n int64
			for _, name := range names {
				f, err := os.Open(v.Path(name))
				if err != nil {
					b.Fatal(err)
				}
				m, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
				f.Close()
				if err != nil {
					b.Fatalf("read %s: %v", name, err)
				}
				n += m
			}
			if n != total {
				b.Fatalf("read %d bytes through the mount, want %d", n, total)
			}
		}
	})
	v.Unmount(b)
	b.Run("fsck", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			b.StopTimer()
			cold(b)
			b.StartTimer()
			if out, err := v.Run("fsck", v.Cipher); err != nil {
				b.Fatalf("fsck: %v\n%s", err, out)
			}
		}
	})
}

// fsckBenchVolume fills the mounted volume v with about size plaintext
// bytes: 256 files of 256 KiB and four large files sharing the rest. It
// returns the files' names and their total size.
func fsckBenchVolume(b *testing.B, v *fusetest.CLIVolume, size int64) ([]string, int64) {
	b.Helper()
	const small, smallSize = 256, 256 << 10
	large := (size - small*smallSize) / 4
	if large < 1<<20 {
		large, size = 1<<20, 4<<20+small*smallSize
	}
	chunk := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(chunk)
	var names []string
	var total int64
	write := func(name string, n int64) {
		f, err := os.Create(v.Path(name))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		// Each MiB differs from the last so that no block repeats.
		for off := int64(0); off < n; off += int64(len(chunk)) {
			chunk[0]++
			k := min(int64(len(chunk)), n-off)
			if _, err := f.Write(chunk[:k]); err != nil {
				b.Fatalf("write %s: %v", name, err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatalf("close %s: %v", name, err)
		}
		names = append(names, name)
		total += n
	}
	if err := os.MkdirAll(v.Path("small"), 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range 4 {
		write(fmt.Sprintf("large-%d", i), large)
	}
	for i := range small {
		write(filepath.Join("small", fmt.Sprintf("f%03d", i)), smallSize)
	}
	return names, total
}

package envelope_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"os"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/stanza"
)

var benchSizes = []struct {
	name string
	n    int
}{{"4KiB", 4 << 10}, {"128KiB", 128 << 10}, {"1MiB", 1 << 20}}

var benchModes = []struct {
	name string
	opt  volOpt
}{
	{"serial", func(o *envelope.Options) { o.Workers = 1 }},
	{"parallel", func(o *envelope.Options) { o.ParallelMin = 1 }},
}

// benchCodec runs fn over every block size, request size and mode.
func benchCodec(b *testing.B, fn func(b *testing.B, c *envelope.Codec, l envelope.Layout, n int)) {
	for _, bs := range []int{4 << 10, 64 << 10} {
		for _, size := range benchSizes {
			if size.n < bs {
				continue
			}
			for _, mode := range benchModes {
				b.Run(fmt.Sprintf("bs=%d/size=%s/mode=%s", bs, size.name, mode.name), func(b *testing.B) {
					v := newVolume(b, bs, mode.opt)
					c, err := v.NewCodec(dataKey(1), envelope.FileID{1})
					if err != nil {
						b.Fatal(err)
					}
					b.SetBytes(int64(size.n))
					b.ReportAllocs()
					fn(b, c, v.Layout(), size.n)
				})
			}
		}
	}
}

// BenchmarkSeal measures sealing one request's blocks (nonces from
// crypto/rand included), without I/O.
func BenchmarkSeal(b *testing.B) {
	benchCodec(b, func(b *testing.B, c *envelope.Codec, l envelope.Layout, n int) {
		p, dst := fill(n, 1), make([]byte, l.SealedLen(n))
		for b.Loop() {
			if err := c.Seal(dst, p, 0, 1<<20); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpen measures opening one request's blocks, without I/O.
func BenchmarkOpen(b *testing.B) {
	benchCodec(b, func(b *testing.B, c *envelope.Codec, l envelope.Layout, n int) {
		p, sealed := fill(n, 1), make([]byte, l.SealedLen(n))
		if err := c.Seal(sealed, p, 0, 1<<20); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := c.Open(p, sealed, 0, 1<<20); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRawGCM is the baseline: crypto/cipher AES-256-GCM with a fixed
// 12-byte nonce over block-sized buffers, one goroutine, no framing.
func BenchmarkRawGCM(b *testing.B) {
	for _, bs := range []int{4 << 10, 64 << 10} {
		for _, size := range benchSizes {
			if size.n < bs {
				continue
			}
			b.Run(fmt.Sprintf("bs=%d/size=%s/mode=raw", bs, size.name), func(b *testing.B) {
				blk, err := aes.NewCipher(dataKey(1))
				if err != nil {
					b.Fatal(err)
				}
				aead, err := cipher.NewGCM(blk)
				if err != nil {
					b.Fatal(err)
				}
				p, dst, nonce := fill(bs, 1), make([]byte, 0, bs+16), make([]byte, 12)
				b.SetBytes(int64(size.n))
				b.ReportAllocs()
				for b.Loop() {
					for range size.n / bs {
						dst = aead.Seal(dst[:0], nonce, p, nil)
					}
				}
			})
		}
	}
}

// BenchmarkFile measures File.WriteAt and File.ReadAt of whole-block
// requests over an in-memory backing file.
func BenchmarkFile(b *testing.B) {
	for _, op := range []string{"WriteAt", "ReadAt"} {
		for _, size := range benchSizes {
			for _, mode := range benchModes {
				b.Run(fmt.Sprintf("op=%s/bs=4096/size=%s/mode=%s", op, size.name, mode.name), func(b *testing.B) {
					v := newVolume(b, 4096, mode.opt)
					f, _ := newFile(b, v, dataKey(2))
					const span = 8 << 20
					if _, err := f.WriteAt(fill(span, 1), 0); err != nil {
						b.Fatal(err)
					}
					p := fill(size.n, 2)
					b.SetBytes(int64(size.n))
					b.ReportAllocs()
					off := int64(0)
					for b.Loop() {
						var err error
						if op == "WriteAt" {
							_, err = f.WriteAt(p, off)
						} else {
							_, err = f.ReadAt(p, off)
						}
						if err != nil {
							b.Fatal(err)
						}
						off = (off + int64(size.n)) % span
					}
				})
			}
		}
	}
}

// BenchmarkVolumeOpen measures opening a small file with its data key at
// hand (the key cache's case): read and parse the header, derive the keys,
// verify the header MAC, set up the block cipher. Not in the table; it
// runs for every file a mount opens.
func BenchmarkVolumeOpen(b *testing.B) {
	v := newVolume(b, 4096)
	f, back := newFile(b, v, dataKey(2))
	if _, err := f.WriteAt(fill(4096, 1), 0); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		g, err := v.Open(context.Background(), back, &clearKeys{})
		if err != nil {
			b.Fatal(err)
		}
		g.Close()
	}
}

// BenchmarkFileTmpfs measures File.ReadAt of 1 MiB requests in sequence
// over a 512 MiB cipher file on tmpfs (/dev/shm where it exists), larger
// than the processor's caches, as a mount's cold sequential read does
// before it replies: op=pread only reads the sealed bytes from the
// backing file, op=ReadAt also opens them. Their difference is the
// AES-GCM cost and the first is the ciphertext copy, the two costs a
// FUSE loopback does not have (docs/PERFORMANCE.md).
func BenchmarkFileTmpfs(b *testing.B) {
	const size, span = 1 << 20, 512 << 20
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = b.TempDir()
	}
	for _, op := range []string{"pread", "ReadAt"} {
		for _, mode := range benchModes {
			if op == "pread" && mode.name != "serial" {
				continue
			}
			b.Run(fmt.Sprintf("op=%s/bs=4096/size=1MiB/mode=%s", op, mode.name), func(b *testing.B) {
				v := newVolume(b, 4096, mode.opt)
				back, err := os.CreateTemp(dir, "kmsfs-bench-*")
				if err != nil {
					b.Fatal(err)
				}
				defer os.Remove(back.Name())
				defer back.Close()
				dk := dataKey(3)
				f, err := v.Create(back, dk, []stanza.Stanza{clearStanza(dk)})
				if err != nil {
					b.Fatal(err)
				}
				p := fill(size, 1)
				for off := int64(0); off < span; off += size {
					if _, err := f.WriteAt(p, off); err != nil {
						b.Fatal(err)
					}
				}
				l := v.Layout()
				sealed := make([]byte, l.SealedLen(size))
				b.SetBytes(size)
				b.ReportAllocs()
				off := int64(0)
				for b.Loop() {
					if op == "pread" {
						_, err = back.ReadAt(sealed, l.BlockOffset(off/4096))
					} else {
						_, err = f.ReadAt(p, off)
					}
					if err != nil {
						b.Fatal(err)
					}
					off = (off + size) % span
				}
			})
		}
	}
}

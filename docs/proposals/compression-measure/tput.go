package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"golang.org/x/sys/unix"
	"math"
	"os"
	"runtime"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// cpu returns this thread's user+system CPU time.
func cpu() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// best runs f three times and returns MB/s of n bytes by the least CPU time.
func best(n int, f func()) float64 {
	d := time.Duration(math.MaxInt64)
	for range 5 {
		t0 := cpu()
		f()
		d = min(d, cpu()-t0)
	}
	return float64(n) / d.Seconds() / 1e6
}

// looksRandom samples 16 bytes of every 256 of blk (1/16 of it) and says
// whether their byte entropy is above 7.2 bits: store as is without trying.
func looksRandom(blk []byte) bool {
	var h [256]uint32
	n := 0
	for off := 0; off+16 <= len(blk); off += 256 {
		for _, c := range blk[off : off+16] {
			h[c]++
		}
		n += 16
	}
	e := 0.0
	for _, c := range h {
		if c > 0 {
			p := float64(c) / float64(n)
			e -= p * math.Log2(p)
		}
	}
	// Sample entropy of n random bytes is biased low by about 255/(2n ln2).
	return e > 8-255/(2*float64(n)*math.Ln2)-0.15
}

func throughput(tarData []byte) {
	runtime.LockOSThread()
	smp := tarData[len(tarData)/4:]
	smp = smp[:min(16<<20, len(smp))]
	rnd := make([]byte, len(smp))
	rand.Read(rnd)
	key := make([]byte, 32)
	blk, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCMWithNonceSize(blk, 16)
	nonce := make([]byte, 16)
	fmt.Printf("\nthroughput per core by thread CPU time, best of 5, MB/s of plaintext (%d MiB of the tar; %d MiB random)\n", len(smp)>>20, len(rnd)>>20)
	for _, bs := range []int{4 << 10, 64 << 10} {
		out := make([]byte, 0, bs+64)
		r := best(len(rnd), func() {
			for off := 0; off+bs <= len(rnd); off += bs {
				out = gcm.Seal(out[:0], nonce, rnd[off:off+bs], nil)
			}
		})
		fmt.Printf("  AES-256-GCM seal, crypto/cipher, B=%dK: %.0f\n", bs>>10, r)
	}
	fmt.Printf("\n%-13s %5s | %8s %8s %6s | %8s (stored as is)\n", "codec", "B", "comp", "decomp", "ratio", "rnd comp")
	for _, c := range codecs() {
		for _, bs := range []int{4 << 10, 16 << 10, 64 << 10, 128 << 10} {
			dst := make([]byte, 0, s2.MaxEncodedLen(bs)+64)
			var encs [][]byte
			var st int
			for off := 0; off+bs <= len(smp); off += bs {
				e := c.enc(dst, smp[off:off+bs])
				if stored(bs, len(e)) < bs {
					encs = append(encs, append([]byte(nil), e...))
					st += len(e)
				} else {
					st += bs
				}
			}
			comp := best(len(smp), func() {
				for off := 0; off+bs <= len(smp); off += bs {
					c.enc(dst, smp[off:off+bs])
				}
			})
			plain := make([]byte, 0, bs)
			dec := best(len(smp), func() {
				for _, e := range encs {
					if out, err := c.dec(plain, e); err != nil || len(out) != bs {
						panic(err)
					}
				}
			})
			raw := 0
			rc := best(len(rnd), func() {
				raw = 0
				for off := 0; off+bs <= len(rnd); off += bs {
					if stored(bs, len(c.enc(dst, rnd[off:off+bs]))) == bs {
						raw++
					}
				}
			})
			fmt.Printf("%-13s %4dK | %8.0f %8.0f %6.3f | %8.0f (%d of %d)\n", c.name, bs>>10, comp, dec, float64(st)/float64(len(smp)), rc, raw, len(rnd)/bs)
		}
	}
	cs := codecs()
	bs := 64 << 10
	dst := make([]byte, 0, s2.MaxEncodedLen(bs)+64)
	fmt.Println("\nincompressible detection at B=64K, zstd-default behind a filter:")
	for _, d := range []struct {
		name string
		b    []byte
	}{{"tar", smp}, {"random", rnd}} {
		var st, skipped int
		r := best(len(d.b), func() {
			st, skipped = 0, 0
			for off := 0; off+bs <= len(d.b); off += bs {
				blk := d.b[off : off+bs]
				if looksRandom(blk) {
					st += bs
					skipped++
					continue
				}
				st += stored(bs, len(cs[0].enc(dst, blk)))
			}
		})
		fmt.Printf("  entropy sample: %-7s %6.0f MB/s ratio %.3f skipped %d\n", d.name, r, float64(st)/float64(len(d.b)), skipped)
		r = best(len(d.b), func() {
			for off := 0; off+bs <= len(d.b); off += bs {
				looksRandom(d.b[off : off+bs])
			}
		})
		fmt.Printf("  entropy sample alone: %-7s %6.0f MB/s\n", d.name, r)
		r = best(len(d.b), func() {
			st = 0
			for off := 0; off+bs <= len(d.b); off += bs {
				blk := d.b[off : off+bs]
				if stored(bs, len(cs[2].enc(dst, blk))) == bs {
					st += bs
					continue
				}
				st += stored(bs, len(cs[0].enc(dst, blk)))
			}
		})
		fmt.Printf("  s2 probe:       %-7s %6.0f MB/s ratio %.3f\n", d.name, r, float64(st)/float64(len(d.b)))
	}
	// How many compressible tar blocks would the entropy filter wrongly skip, over the whole tar?
	var lost, n int
	for off := 0; off+bs <= len(tarData); off += bs {
		blk := tarData[off : off+bs]
		n++
		if looksRandom(blk) {
			if e := len(cs[0].enc(dst, blk)); stored(bs, e) < bs {
				lost += bs - e
			}
		}
	}
	fmt.Printf("  entropy filter over whole tar: %d bytes of saving lost (%.4f of tar)\n", lost, float64(lost)/float64(len(tarData)))

	// Tail recompression: tar writes 10240-byte records; without writeback
	// cache every write re-seals the partial last block.
	var work int64
	for end := 10240; end <= len(tarData); end += 10240 {
		b := (end - 1) / bs * bs
		work += int64(end - b)
	}
	fmt.Printf("\n10240-byte sequential writes at B=64K: bytes compressed if every partial tail is compressed = %.2fx the file\n", float64(work)/float64(len(tarData)))

	bomb()
}

// bomb checks that a block claiming far more than B is refused before allocating.
func bomb() {
	big := bytes.Repeat([]byte{0}, 64<<20)
	ze, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	zf := ze.EncodeAll(big, nil)
	sf := s2.Encode(nil, big)
	big = nil
	runtime.GC()
	zd, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<10), zstd.WithDecodeAllCapLimit(true))
	dst := make([]byte, 0, 64<<10)
	var m0, m1 runtime.MemStats
	var h zstd.Header
	runtime.ReadMemStats(&m0)
	herr := h.Decode(zf)
	_, derr := zd.DecodeAll(zf, dst)
	n, serr := s2.DecodedLen(sf)
	runtime.ReadMemStats(&m1)
	fmt.Printf("\nbomb: zstd frame %d bytes, header FCS %d (err %v); DecodeAll into cap 64K: %v; s2 %d bytes DecodedLen %d (%v); heap allocated during checks: %d bytes\n",
		len(zf), h.FrameContentSize, herr, derr, len(sf), n, serr, m1.TotalAlloc-m0.TotalAlloc)
	fmt.Fprintln(os.Stderr, "done")
}

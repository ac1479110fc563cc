// Command compression-measure made the figures of docs/proposals/compression.md:
// per-block compression of the Go source tree and of a tar of it, under the
// proposed packed layout, against uncompressed kmsfs; and single-core codec
// throughput. Its own module, outside the build: go run . -h
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

const (
	hdr      = 2048 // two 1 KiB header slots
	rawOver  = 32   // nonce + tag
	recPre   = 16   // record prefix: block index 6, flags 1, 0 1, extent 4, sealed length 4
	recOver  = recPre + 32
	mapEnt   = 10 // map entry: offset 6, extent 4
	trailer  = 96 // fixed trailer
	page     = 4096
	skipFrac = 32 // store as-is unless compression saves at least 1/32
)

func r4k(n int64) int64 { return (n + page - 1) / page * page }

type codec struct {
	name string
	enc  func(dst, src []byte) []byte
	dec  func(dst, src []byte) ([]byte, error)
}

func codecs() []codec {
	mk := func(l zstd.EncoderLevel) *zstd.Encoder {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true), zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(err)
		}
		return e
	}
	zd, zf := mk(zstd.SpeedDefault), mk(zstd.SpeedFastest)
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<20),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		panic(err)
	}
	zdec := func(dst, src []byte) ([]byte, error) { return dec.DecodeAll(src, dst[:0]) }
	return []codec{
		{"zstd-default", func(d, s []byte) []byte { return zd.EncodeAll(s, d[:0]) }, zdec},
		{"zstd-fastest", func(d, s []byte) []byte { return zf.EncodeAll(s, d[:0]) }, zdec},
		{"s2", func(d, s []byte) []byte { return s2.Encode(d[:cap(d)], s) }, func(d, s []byte) ([]byte, error) { return s2.Decode(d[:cap(d)], s) }},
	}
}

// stored returns the stored payload size of one block of n bytes compressing to c.
func stored(n, c int) int {
	if c > n-n/skipFrac {
		return n
	}
	return c
}

type sizes struct{ app, alloc, slotAlloc int64 }

// packedFile returns apparent and allocated size of one file under the packed
// layout (records back to back, then the map written at last close, then the
// trailer), plus the allocation of the fixed-slot-with-holes alternative.
func packedFile(blocks []int, maps int64) sizes {
	if len(blocks) == 0 {
		return sizes{hdr, r4k(hdr), r4k(hdr)}
	}
	a := int64(hdr)
	slot := int64(page) // header padded to a page
	for _, s := range blocks {
		a += int64(s) + recOver
		slot += r4k(int64(s) + recOver)
	}
	a += maps + int64(len(blocks))*mapEnt + recOver + trailer
	return sizes{a, r4k(a), slot}
}

func rawFile(n int64, b int64) int64 {
	if n == 0 {
		return hdr
	}
	c := int64(hdr) + n/b*(b+rawOver)
	if n%b > 0 {
		c += n%b + rawOver
	}
	return c
}

func main() {
	root := flag.String("root", filepath.Join(runtime.GOROOT(), "src"), "tree")
	tarPath := flag.String("tar", "/tmp/gosrc.tar", "tar of the tree")

	flag.Parse()
	runtime.GOMAXPROCS(1)

	var files [][]byte
	var total int64
	filepath.WalkDir(*root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil {
			files = append(files, b)
			total += int64(len(b))
		}
		return nil
	})
	tarData, err := os.ReadFile(*tarPath)
	if err != nil {
		panic(err)
	}
	fmt.Printf("tree: %d files, %d bytes; tar: %d bytes\n", len(files), total, len(tarData))

	bss := []int{4 << 10, 16 << 10, 64 << 10, 128 << 10}
	// Baselines: uncompressed kmsfs at B = 4 KiB (the default) and at each B.
	var tApp, tAlloc int64
	for _, f := range files {
		c := rawFile(int64(len(f)), 4096)
		tApp += c
		tAlloc += r4k(c)
	}
	tarRaw := rawFile(int64(len(tarData)), 4096)
	fmt.Printf("baseline raw kmsfs B=4K: tree apparent %d allocated %d; tar apparent %d allocated %d\n",
		tApp, tAlloc, tarRaw, r4k(tarRaw))
	var plainAlloc int64
	for _, f := range files {
		plainAlloc += r4k(int64(len(f)))
	}
	fmt.Printf("plain (no kmsfs) tree allocated %d\n", plainAlloc)

	fmt.Printf("\n%-13s %5s | %-28s | %-28s | %s\n", "codec", "B", "tree app/alloc vs raw4K", "tar app/alloc vs raw4K", "tree slot-holes alloc")
	for _, c := range codecs() {
		for _, bs := range bss {
			dst := make([]byte, 0, s2.MaxEncodedLen(bs)+64)
			var s sizes
			var rawB int64
			for _, f := range files {
				var blocks []int
				for off := 0; off < len(f); off += bs {
					blk := f[off:min(off+bs, len(f))]
					blocks = append(blocks, stored(len(blk), len(c.enc(dst, blk))))
				}
				p := packedFile(blocks, 0)
				s.app += p.app
				s.alloc += p.alloc
				s.slotAlloc += p.slotAlloc
				rawB += r4k(rawFile(int64(len(f)), int64(bs)))
			}
			// tar written front to back: records packed, checkpoint maps
			// written when the tail reaches max(256, n/16) records; each
			// old map becomes garbage.
			var blocks []int
			var maps int64
			tail := 0
			for off := 0; off < len(tarData); off += bs {
				blk := tarData[off:min(off+bs, len(tarData))]
				blocks = append(blocks, stored(len(blk), len(c.enc(dst, blk))))
				tail++
				if tail >= max(256, len(blocks)/16) {
					maps += int64(len(blocks))*mapEnt + recOver
					tail = 0
				}
			}
			t := packedFile(blocks, maps)
			fmt.Printf("%-13s %4dK | %6.3f / %6.3f (raw@B %5.3f) | %6.3f / %6.3f (maps %dK) | %6.3f\n",
				c.name, bs>>10, float64(s.app)/float64(tApp), float64(s.alloc)/float64(tAlloc),
				float64(rawB)/float64(tAlloc),
				float64(t.app)/float64(tarRaw), float64(t.alloc)/float64(r4k(tarRaw)), maps>>10,
				float64(s.slotAlloc)/float64(tAlloc))
		}
	}

	if os.Getenv("BACKOFF") != "" {
		c := codecs()[0]
		fmt.Println("tree:")
		backoff(files, c.enc, 64<<10)
		fmt.Println("tar:")
		backoff([][]byte{tarData}, c.enc, 64<<10)
		return
	}
	throughput(tarData)
	// Bomb: a frame whose header claims 1 GiB must be refused before allocating.

}

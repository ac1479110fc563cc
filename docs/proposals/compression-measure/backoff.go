package main

import "fmt"

// backoff simulates the per-file skip rule: after a block is stored as is,
// the next k blocks are stored as is without trying (k = 1, 2, 4 ... 64),
// reset when a try compresses. It reports the stored bytes lost against
// trying every block, and the share of blocks tried.
func backoff(files [][]byte, enc func(dst, src []byte) []byte, bs int) {
	dst := make([]byte, 0, 2*bs+64)
	var every, with, tries, blocks int64
	for _, f := range files {
		skip, k := 0, 0
		for off := 0; off < len(f); off += bs {
			blk := f[off:min(off+bs, len(f))]
			s := stored(len(blk), len(enc(dst, blk)))
			every += int64(s)
			blocks++
			if skip > 0 {
				skip--
				with += int64(len(blk))
				continue
			}
			tries++
			with += int64(s)
			if s == len(blk) {
				k = min(max(2*k, 1), 64)
				skip = k
			} else {
				k = 0
			}
		}
	}
	fmt.Printf("  backoff B=%dK: stored %d vs %d trying every block (+%.4f), tried %.3f of blocks\n",
		bs>>10, with, every, float64(with-every)/float64(every), float64(tries)/float64(blocks))
}

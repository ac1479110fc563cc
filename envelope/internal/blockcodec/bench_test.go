package blockcodec_test

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	benchBlockSize  = 64 << 10
	benchSampleSize = 16 << 20
)

// goSourceTar returns the first benchSampleSize bytes of a tar of the Go
// tree's src directory, in walk order: the backup-like data that
// compressed volumes are for.
func goSourceTar(b *testing.B) []byte {
	b.Helper()
	// go test puts its own toolchain's bin first on PATH.
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "src")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || buf.Len() >= benchSampleSize || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: path[len(src)+1:], Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		b.Fatalf("tar of %s: %v", src, err)
	}
	if buf.Len() < benchSampleSize {
		b.Fatalf("tar of %s: only %d bytes", src, buf.Len())
	}
	return buf.Bytes()[:benchSampleSize]
}

// benchData returns the samples, cut into blocks of benchBlockSize.
func benchData(b *testing.B) []struct {
	name   string
	blocks [][]byte
} {
	b.Helper()
	cut := func(data []byte) [][]byte {
		var blocks [][]byte
		for len(data) >= benchBlockSize {
			blocks = append(blocks, data[:benchBlockSize])
			data = data[benchBlockSize:]
		}
		return blocks
	}
	return []struct {
		name   string
		blocks [][]byte
	}{
		{"gosrc-tar", cut(goSourceTar(b))},
		{"random", cut(randomBytes(15, benchSampleSize))},
	}
}

// BenchmarkCompress compresses 64 KiB blocks, reporting the stored size
// as a fraction of the plaintext (ratio) and the share stored compressed.
func BenchmarkCompress(b *testing.B) {
	for _, data := range benchData(b) {
		for _, cc := range codecCases {
			b.Run("data="+data.name+",codec="+cc.name, func(b *testing.B) {
				c := newCodec(b, cc.alg, cc.level, benchBlockSize)
				dst := make([]byte, 0, benchBlockSize)
				var stored, compressed, blocks int
				b.SetBytes(benchBlockSize)
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					out, ok := c.Compress(dst[:0], data.blocks[i%len(data.blocks)])
					stored += len(out)
					blocks++
					if ok {
						compressed++
					}
				}
				b.ReportMetric(float64(stored)/float64(blocks*benchBlockSize), "ratio")
				b.ReportMetric(float64(compressed)/float64(blocks), "compressed/block")
			})
		}
	}
}

// BenchmarkDecompress decompresses the 64 KiB blocks of the Go source tar
// in place (random data is stored as is and never decompressed).
func BenchmarkDecompress(b *testing.B) {
	tarBlocks := benchData(b)[0].blocks
	for _, cc := range codecCases {
		b.Run("data=gosrc-tar,codec="+cc.name, func(b *testing.B) {
			c := newCodec(b, cc.alg, cc.level, benchBlockSize)
			type stored struct {
				enc []byte
				n   int
			}
			var blocks []stored
			for _, blk := range tarBlocks {
				if enc, ok := c.Compress(nil, blk); ok {
					blocks = append(blocks, stored{enc, len(blk)})
				}
			}
			if len(blocks) == 0 {
				b.Fatalf("no block of the tar compressed")
			}
			dst := make([]byte, 0, c.DecodeRoom())
			b.SetBytes(benchBlockSize)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				s := blocks[i%len(blocks)]
				if _, err := c.Decompress(dst, s.enc, s.n); err != nil {
					b.Fatalf("Decompress: %v", err)
				}
			}
		})
	}
}

// BenchmarkCompressParallel compresses tar blocks on every core at once,
// through the shared pools.
func BenchmarkCompressParallel(b *testing.B) {
	tarBlocks := benchData(b)[0].blocks
	for _, cc := range codecCases {
		b.Run("data=gosrc-tar,codec="+cc.name, func(b *testing.B) {
			c := newCodec(b, cc.alg, cc.level, benchBlockSize)
			b.SetBytes(benchBlockSize)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				dst := make([]byte, 0, benchBlockSize)
				for i := 0; pb.Next(); i++ {
					c.Compress(dst[:0], tarBlocks[i%len(tarBlocks)])
				}
			})
		})
	}
}

package names_test

import (
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// benchLens are a typical name and a long name (over the short limit).
var benchLens = []int{20, 200}

func BenchmarkEncrypt(b *testing.B) {
	c, dir := newCodec(b, 1), dirID(1)
	for _, n := range benchLens {
		b.Run(fmt.Sprintf("len=%d", n), func(b *testing.B) {
			name := nameOfLen(n, 0)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Encrypt(dir, name); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecrypt(b *testing.B) {
	c, dir := newCodec(b, 1), dirID(1)
	for _, n := range benchLens {
		b.Run(fmt.Sprintf("len=%d", n), func(b *testing.B) {
			stored, err := c.Encrypt(dir, nameOfLen(n, 0))
			if err != nil {
				b.Fatal(err)
			}
			decrypt := func() (string, error) { return c.Decrypt(dir, stored.Backing) }
			if names.IsLong(stored.Backing) {
				decrypt = func() (string, error) { return c.DecryptLong(dir, stored.Backing, stored.Side) }
			}
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decrypt(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkTarget(b *testing.B) {
	c := newCodec(b, 1)
	for _, n := range []int{20, names.MaxTargetLen} {
		b.Run(fmt.Sprintf("len=%d", n), func(b *testing.B) {
			target := nameOfLen(n, 0)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				enc, err := c.EncryptTarget(target)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.DecryptTarget(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package local_test

import (
	"context"
	"testing"

	"github.com/kmsfs/kmsfs/keysource/local"
)

func BenchmarkWrap(b *testing.B) {
	s, _ := keyFileSource(b, volA)
	dk := randomBytes(b, 32)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Wrap(ctx, dk); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	s, _ := keyFileSource(b, volA)
	ctx := context.Background()
	st, err := s.Wrap(ctx, randomBytes(b, 32))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Unwrap(ctx, st); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenPassphrase measures the default KDF: the cost of opening a
// passphrase volume once per mount.
func BenchmarkOpenPassphrase(b *testing.B) {
	kdf, err := local.NewKDFParams(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := openPassphrase(local.Options{KDF: kdf, LookupEnv: env("correct horse battery staple")}); err != nil {
			b.Fatal(err)
		}
	}
}

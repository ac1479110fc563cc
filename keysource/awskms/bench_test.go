package awskms_test

import (
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// benchLatencies are the KMS round-trip delays benchmarked: the emulator
// direct, and behind the proxy adding 10 ms (a KMS call from EC2 in the
// same region takes a few ms; across regions tens).
var benchLatencies = []time.Duration{0, 10 * time.Millisecond}

type benchCase struct {
	name string
	ks   keysource.KeySource
	c    *kmstest.Counter
}

// benchSources returns, for each latency and key kind, a source that talks
// to the emulator directly (latency 0) or through a delaying proxy.
func benchSources(b *testing.B, e *kmstest.Emulator) []benchCase {
	var cases []benchCase
	for _, lat := range benchLatencies {
		o := awskms.Options{MaxAttempts: 1}
		if lat > 0 {
			p := kmstest.NewProxy(b, e.Endpoint)
			p.SetLatency(lat)
			o.Endpoint = p.URL
		}
		for _, k := range []struct{ kind, key string }{{"symmetric", e.Symmetric.ARN}, {"rsa", e.RSAEncrypt.ARN}} {
			c := kmstest.NewCounter()
			cases = append(cases, benchCase{
				name: "key=" + k.kind + "/latency=" + lat.String(),
				ks:   mustSource(b, e, k.key, volume1, c, o),
				c:    c,
			})
		}
	}
	return cases
}

// reportCalls reports KMS calls per 1,000 operations.
func reportCalls(b *testing.B, c *kmstest.Counter) {
	b.ReportMetric(float64(c.Total())*1000/float64(b.N), "calls/1kop")
}

// BenchmarkUnwrap is an unwrap with no cache: one Decrypt per operation.
func BenchmarkUnwrap(b *testing.B) {
	e := fusetest.KMS(b)
	for _, bc := range benchSources(b, e) {
		b.Run(bc.name, func(b *testing.B) {
			ctx := testContext(b)
			st := mustWrap(b, bc.ks, newDataKey())
			bc.c.Reset()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.ks.Unwrap(ctx, st); err != nil {
					b.Fatal(err)
				}
			}
			reportCalls(b, bc.c)
		})
	}
}

// BenchmarkWrap wraps a given data key: one Encrypt (symmetric) or a local
// RSA-OAEP encryption with no KMS call (RSA).
func BenchmarkWrap(b *testing.B) {
	e := fusetest.KMS(b)
	for _, bc := range benchSources(b, e) {
		b.Run(bc.name, func(b *testing.B) {
			ctx := testContext(b)
			dk := newDataKey()
			bc.c.Reset()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.ks.Wrap(ctx, dk); err != nil {
					b.Fatal(err)
				}
			}
			reportCalls(b, bc.c)
		})
	}
}

// BenchmarkGenerateDataKey is one GenerateDataKey per operation (symmetric
// keys only).
func BenchmarkGenerateDataKey(b *testing.B) {
	e := fusetest.KMS(b)
	for _, bc := range benchSources(b, e) {
		gen, ok := bc.ks.(keysource.Generator)
		if !ok {
			continue
		}
		b.Run(bc.name, func(b *testing.B) {
			ctx := testContext(b)
			bc.c.Reset()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := gen.GenerateDataKey(ctx); err != nil {
					b.Fatal(err)
				}
			}
			reportCalls(b, bc.c)
		})
	}
}

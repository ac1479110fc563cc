package integration_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
)

// The key-source benchmarks run the data-key manager over the real sources
// of ksCases, and for awskms also behind a kmstest.Proxy that adds the
// round-trip time of a KMS in another availability zone or region. Each
// reports kms-calls/1000ops: calls made at the source's client boundary
// per 1,000 operations; that is KMS operations for awskms, and Wrap and
// Unwrap calls into the source for pkcs11 and local (see ksSource), of
// which only pkcs11-aes calls and pkcs11-rsa unwraps reach the token.
//
//	go test -run '^$' -bench Keys -benchtime 200x ./integration/

// ksBenchLatency is the KMS round trip injected in front of local-kms.
const ksBenchLatency = 10 * time.Millisecond

// ksBench is one benchmarked source: a case and the latency injected in
// front of local-kms (awskms only).
type ksBench struct {
	c       ksCase
	latency time.Duration
}

func (kb ksBench) String() string {
	return fmt.Sprintf("source=%s,latency=%v", kb.c.name, kb.latency)
}

// ksBenches returns every source without added latency, and the awskms
// sources again behind a proxy adding ksBenchLatency.
func ksBenches() []ksBench {
	var out []ksBench
	for _, c := range ksCases() {
		out = append(out, ksBench{c: c})
		if c.kind == ksAWS {
			out = append(out, ksBench{c: c, latency: ksBenchLatency})
		}
	}
	return out
}

// openBench opens kb's source, through a delaying proxy when kb has latency.
func (env *ksEnv) openBench(b *testing.B, kb ksBench) *ksSource {
	b.Helper()
	endpoint := ""
	if kb.latency > 0 {
		p := kmstest.NewProxy(b, env.emulator(b).Endpoint)
		p.SetLatency(kb.latency)
		endpoint = p.URL
	}
	return env.open(b, kb.c, endpoint)
}

// ksReportCalls reports the client-boundary calls per 1,000 of n operations.
func ksReportCalls(b *testing.B, src *ksSource, n int) {
	b.ReportMetric(float64(src.calls())*1000/float64(n), "kms-calls/1000ops")
}

// BenchmarkKeysUnwrap opens a file's stanza through a Manager: a cache hit
// (a file whose data key another open already unwrapped: no call) and a
// cache miss (the cache disabled, so every open unwraps: one call).
func BenchmarkKeysUnwrap(b *testing.B) {
	env := newKSEnv(b)
	for _, kb := range ksBenches() {
		for _, cache := range []string{"hit", "miss"} {
			b.Run(kb.String()+",cache="+cache, func(b *testing.B) {
				src := env.openBench(b, kb)
				ctx := ksContext(b)
				o := keysource.Options{Primary: src.ks, DeferPool: true}
				if cache == "miss" {
					o.CacheEntries = -1
				}
				m := ksManager(b, o)
				st, err := src.ks.Wrap(ctx, ksRandomKey(b))
				if err != nil {
					b.Fatalf("Wrap: %v", err)
				}
				stanzas := []keysource.Stanza{st}
				if _, err := m.UnwrapKey(ctx, stanzas); err != nil {
					b.Fatalf("UnwrapKey: %v", err)
				}
				src.resetCalls()
				b.ReportAllocs()
				n := 0
				for b.Loop() {
					if _, err := m.UnwrapKey(ctx, stanzas); err != nil {
						b.Fatalf("UnwrapKey: %v", err)
					}
					n++
				}
				ksReportCalls(b, src, n)
			})
		}
	}
}

// BenchmarkKeysNewDataKey takes the data key and stanzas for a new file
// from a warm pool, under the default batched policy and under per-file,
// and reports the median wait (p50-ns) besides the mean. Generate or wrap
// calls happen in the background; their count is taken once the refill
// has settled after the loop.
func BenchmarkKeysNewDataKey(b *testing.B) {
	env := newKSEnv(b)
	for _, kb := range ksBenches() {
		for _, policy := range []string{"batched", "per-file"} {
			b.Run(kb.String()+",policy="+policy, func(b *testing.B) {
				pol, err := keysource.ParsePolicy(policy)
				if err != nil {
					b.Fatal(err)
				}
				src := env.openBench(b, kb)
				ctx := ksContext(b)
				m := ksManager(b, keysource.Options{Primary: src.ks, Policy: pol})
				if err := m.WaitReady(ctx); err != nil {
					b.Fatalf("warming the pool: %v", err)
				}
				src.resetCalls()
				// The last len(times) waits, kept without allocating.
				times := make([]time.Duration, 1<<16)
				n := 0
				b.ReportAllocs()
				for b.Loop() {
					start := time.Now()
					if _, _, err := m.NewDataKey(ctx); err != nil {
						b.Fatalf("NewDataKey: %v", err)
					}
					times[n%len(times)] = time.Since(start)
					n++
				}
				if err := m.WaitReady(ctx); err != nil {
					b.Fatalf("refilling the pool: %v", err)
				}
				times = times[:min(n, len(times))]
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)/2].Nanoseconds()), "p50-ns")
				ksReportCalls(b, src, n)
			})
		}
	}
}

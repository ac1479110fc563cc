package keysource_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// latency returns a hook that delays every key-source call by d, as a
// remote KMS would.
func latency(d time.Duration) func(context.Context, keysourcetest.Op) error {
	if d == 0 {
		return nil
	}
	return func(ctx context.Context, _ keysourcetest.Op) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func BenchmarkUnwrapKey(b *testing.B) {
	for _, c := range []struct {
		cache    string
		parallel bool
	}{{"hit", false}, {"hit", true}, {"miss", false}} {
		b.Run(fmt.Sprintf("cache=%s,parallel=%v", c.cache, c.parallel), func(b *testing.B) {
			src := keysourcetest.New(keysourcetest.Options{})
			o := keysource.Options{Primary: src, DeferPool: true}
			if c.cache == "miss" {
				o.CacheEntries = -1
			}
			m := newManager(b, o)
			st := []keysource.Stanza{wrap(b, src, randomKey(b))}
			ctx := context.Background()
			if _, err := m.UnwrapKey(ctx, st); err != nil {
				b.Fatal(err)
			}
			src.ResetCalls()
			b.ReportAllocs()
			b.ResetTimer()
			if c.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := m.UnwrapKey(ctx, st); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for range b.N {
					if _, err := m.UnwrapKey(ctx, st); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(src.Calls(keysourcetest.OpUnwrap))*1000/float64(b.N), "calls/1000ops")
		})
	}
}

// BenchmarkNewDataKey measures a create's wait for a data key from a warm
// pool, with and without simulated KMS latency, reporting the median and
// the generate calls made per 1,000 creates.
func BenchmarkNewDataKey(b *testing.B) {
	for _, policy := range []string{"batched", "per-file"} {
		for _, lat := range []time.Duration{0, 10 * time.Millisecond} {
			b.Run(fmt.Sprintf("policy=%s,latency=%v", policy, lat), func(b *testing.B) {
				pol, err := keysource.ParsePolicy(policy)
				if err != nil {
					b.Fatal(err)
				}
				src := keysourcetest.NewGenerating(keysourcetest.Options{Hook: latency(lat)})
				m := newManager(b, keysource.Options{Primary: src, Policy: pol})
				ctx := context.Background()
				if err := m.WaitReady(ctx); err != nil {
					b.Fatal(err)
				}
				src.ResetCalls()
				times := make([]time.Duration, 0, 1<<16)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					start := time.Now()
					if _, _, err := m.NewDataKey(ctx); err != nil {
						b.Fatal(err)
					}
					if len(times) < cap(times) {
						times = append(times, time.Since(start))
					}
				}
				b.StopTimer()
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(src.Calls(keysourcetest.OpGenerate))*1000/float64(b.N), "calls/1000ops")
			})
		}
	}
}

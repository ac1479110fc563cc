package volume_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/volume"
)

// rewrapBenchFiles is the size of the benchmarked volume, in files.
const rewrapBenchFiles = 10000

// BenchmarkRewrap rewraps a volume of 10,000 small files made under the
// batched data-key policy from one KMS key to another (and back, on the
// next iteration), against local-kms behind a proxy that adds 10 ms to
// every request, as a KMS in another zone would. It reports the files
// per second and the KMS requests of one rewrap beside the distinct data
// keys rewrapped, between two symmetric keys and to an RSA key.
//
//	go test -run '^$' -bench Rewrap -benchtime 4x ./volume/
func BenchmarkRewrap(b *testing.B) {
	e := fusetest.KMS(b)
	p := kmstest.NewProxy(b, e.Endpoint)
	e.SetAWSEnv(b, p.URL)
	d := b.TempDir()
	tv := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, _, err := volume.Init(ctx, tv.dir, volume.InitOptions{Keys: []string{"awskms:" + e.Symmetric.ARN}, TrustDir: tv.trust}); err != nil {
		b.Fatal(err)
	}
	v, err := volume.Open(ctx, tv.dir, volume.Options{TrustDir: tv.trust})
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, 1000)
	for i := range rewrapBenchFiles {
		p := filepath.Join(tv.dir, fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%05d", i))
		if i < 100 {
			if err := os.Mkdir(filepath.Dir(p), 0o700); err != nil {
				b.Fatal(err)
			}
		}
		bf, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		dk, sts, err := v.Keys.NewDataKey(ctx)
		if err != nil {
			b.Fatal(err)
		}
		f, err := v.Format.Create(bf, dk, sts)
		clear(dk)
		if err == nil {
			_, err = f.WriteAt(plain, 0)
		}
		if err == nil {
			err = f.Close()
		}
		bf.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	v.Close()
	p.SetLatency(10 * time.Millisecond)
	ops := []string{"Decrypt", "ReEncrypt", "Encrypt", "GenerateDataKey", "DescribeKey", "GetPublicKey"}
	rewrap := func(b *testing.B, to string) (*volume.RewrapReport, time.Duration, map[string]int) {
		before := map[string]int{}
		for _, op := range ops {
			before[op] = p.Requests(op)
		}
		start := time.Now()
		r, err := volume.Rewrap(ctx, tv.dir, volume.RewrapOptions{To: "awskms:" + to, TrustDir: tv.trust})
		el := time.Since(start)
		if err != nil || !r.Done() || r.Rewrapped != rewrapBenchFiles {
			b.Fatalf("rewrap: %+v, %v", r, err)
		}
		calls := map[string]int{}
		for _, op := range ops {
			calls[op] = p.Requests(op) - before[op]
		}
		return r, el, calls
	}
	// to=symmetric: between two symmetric keys (ReEncrypt), back and
	// forth. to=rsa: to an RSA key (wrapped locally with its public key),
	// then back untimed.
	cur := e.Symmetric.ARN // the key the files are under, across runs
	for _, target := range []string{"symmetric", "rsa"} {
		b.Run("to="+target, func(b *testing.B) {
			for range b.N {
				to := e.Symmetric2.ARN
				switch {
				case target == "rsa":
					to = e.RSAEncrypt.ARN
				case cur == e.Symmetric2.ARN:
					to = e.Symmetric.ARN
				}
				r, el, calls := rewrap(b, to)
				cur = to
				total := 0
				for _, n := range calls {
					total += n
				}
				b.ReportMetric(float64(rewrapBenchFiles)/el.Seconds(), "files/s")
				b.ReportMetric(el.Seconds(), "s/rewrap")
				b.ReportMetric(float64(r.DataKeys), "data-keys")
				b.ReportMetric(float64(total), "kms-calls")
				b.ReportMetric(float64(calls["Decrypt"]), "decrypt-calls")
				b.ReportMetric(float64(calls["ReEncrypt"]), "reencrypt-calls")
				if target == "rsa" {
					b.StopTimer()
					rewrap(b, e.Symmetric.ARN)
					cur = e.Symmetric.ARN
					b.StartTimer()
				}
			}
		})
	}
}

package main

// The tests are in package main: a command's package cannot be imported
// by an external test package.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRoundOrder(t *testing.T) {
	cases := []struct {
		fss []string
	}{
		{[]string{fsKmsfs, fsLoop}},
		{[]string{fsKmsfs, fsKmsfsMetrics, fsLoop}},
		{[]string{fsKmsfs, fsKmsfsNames, fsKmsfsMetrics, fsLoop}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.fss, ","), func(t *testing.T) {
			// Over len(fss) rounds every filesystem runs once in every
			// position: none is always first or always last.
			n := len(c.fss)
			for pos := range n {
				var seen []string
				for round := 1; round <= n; round++ {
					order := roundOrder(c.fss, round)
					if len(order) != n {
						t.Fatalf("round %d: order %v, want the %d filesystems %v", round, order, n, c.fss)
					}
					seen = append(seen, order[pos])
				}
				slices.Sort(seen)
				want := slices.Sorted(slices.Values(c.fss))
				if !slices.Equal(seen, want) {
					t.Errorf("position %d over %d rounds: %v, want each of %v once", pos, n, seen, want)
				}
			}
			if got := roundOrder(c.fss, n+1); !slices.Equal(got, c.fss) {
				t.Errorf("round %d: %v, want the cycle to start again with %v", n+1, got, c.fss)
			}
		})
	}
}

// samples returns one sample per value, rounds from 1.
func samples(g group, p phase, fs string, values ...float64) []sample {
	var ss []sample
	for i, v := range values {
		ss = append(ss, sample{Group: g.name, Phase: p.key, FS: fs, Round: i + 1, Unit: p.unit, Value: v, CPUSeconds: 1})
	}
	return ss
}

func TestRowsVariants(t *testing.T) {
	iops := phase{key: "randread-1", label: "rand read 4K, 1 job, cold", unit: unitIOPS}
	secs := phase{key: "small-create", label: "create 500 x 4K files", unit: unitSec}
	untar := phase{key: "untar", label: "untar Go src", unit: unitSec}
	rand := group{name: "rand", phases: []phase{iops}, variants: []variant{metricsOn()}}
	small := group{name: "small", phases: []phase{secs}, variants: []variant{metricsOn()}}
	tar := group{name: "untar", phases: []phase{untar}, variants: []variant{namesOn()}}
	cases := []struct {
		name    string
		g       group
		p       phase
		plain   []float64 // the plain kmsfs over the rounds
		variant []float64
		fs      string
		target  string
		verdict string
		vsBase  float64
	}{
		// Plain IOPS spread 9000..10000 around 10000: a 10% band.
		{"metrics IOPS within the rounds' spread", rand, iops, []float64{9000, 10000, 10000}, []float64{9200, 9300, 9400}, fsKmsfsMetrics, "metrics>=0.90", "ok", 0.93},
		{"metrics IOPS cost beyond the spread", rand, iops, []float64{9000, 10000, 10000}, []float64{8000, 8500, 8900}, fsKmsfsMetrics, "metrics>=0.90", "MISS metrics>=0.90", 0.85},
		{"metrics IOPS ahead is no cost", rand, iops, []float64{10000, 10000, 10000}, []float64{12000, 12000, 12000}, fsKmsfsMetrics, "metrics>=0.95", "ok", 1.2},
		// Rounds that agree exactly still leave the fixed floor.
		{"metrics IOPS within the 5% floor", rand, iops, []float64{10000, 10000, 10000}, []float64{9600, 9600, 9600}, fsKmsfsMetrics, "metrics>=0.95", "ok", 0.96},
		{"metrics IOPS past the 5% floor", rand, iops, []float64{10000, 10000, 10000}, []float64{9400, 9400, 9400}, fsKmsfsMetrics, "metrics>=0.95", "MISS metrics>=0.95", 0.94},
		{"metrics seconds within", small, secs, []float64{1.0, 1.2, 1.0}, []float64{1.1, 1.1, 1.2}, fsKmsfsMetrics, "metrics<=1.20", "ok", 1.1},
		{"metrics seconds cost beyond", small, secs, []float64{1.0, 1.2, 1.0}, []float64{1.3, 1.3, 1.3}, fsKmsfsMetrics, "metrics<=1.20", "MISS metrics<=1.20", 1.3},
		{"metrics seconds faster is no cost", small, secs, []float64{1.0, 1.0, 1.0}, []float64{0.5, 0.5, 0.5}, fsKmsfsMetrics, "metrics<=1.05", "ok", 0.5},
		// The names rows keep their own target, whatever the spread.
		{"names within 1.1", tar, untar, []float64{2, 2, 2}, []float64{2.1, 2.1, 2.1}, fsKmsfsNames, "names<=1.1 rss<=150", "ok", 1.05},
		{"names beyond 1.1", tar, untar, []float64{2, 2.6, 2}, []float64{2.4, 2.4, 2.4}, fsKmsfsNames, "names<=1.1 rss<=150", "MISS names<=1.1", 1.2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &bench{}
			b.samples = append(b.samples, samples(c.g, c.p, fsKmsfs, c.plain...)...)
			b.samples = append(b.samples, samples(c.g, c.p, c.fs, c.variant...)...)
			b.samples = append(b.samples, samples(c.g, c.p, fsLoop, c.plain...)...)
			rows := b.rows([]group{c.g})
			if len(rows) != 2 {
				t.Fatalf("%d rows, want the plain kmsfs's and the variant's: %+v", len(rows), rows)
			}
			plain, r := rows[0], rows[1]
			if plain.Variant != "" || plain.Phase != c.p.key || plain.Label != c.p.label {
				t.Errorf("first row: variant %q, phase %q, label %q; want the plain kmsfs's row of %s", plain.Variant, plain.Phase, plain.Label, c.p.key)
			}
			v, _ := c.g.variant(c.fs)
			if r.Variant != v.label || r.Phase != c.p.key+v.suffix || r.Label != c.p.label+", "+v.label {
				t.Errorf("variant row: variant %q, phase %q, label %q; want %q rows of %s", r.Variant, r.Phase, r.Label, v.label, c.p.key)
			}
			if r.Base != plain.Kmsfs {
				t.Errorf("base %v, want the plain kmsfs median %v", r.Base, plain.Kmsfs)
			}
			if got := fmt.Sprintf("%.2f", r.VsBase); got != fmt.Sprintf("%.2f", c.vsBase) {
				t.Errorf("vs base %s, want %.2f", got, c.vsBase)
			}
			if r.Target != c.target || r.Verdict != c.verdict {
				t.Errorf("target %q, verdict %q; want %q, %q", r.Target, r.Verdict, c.target, c.verdict)
			}
		})
	}
}

func TestRowsPlainUnchanged(t *testing.T) {
	// A group's variants add rows and change none of the plain kmsfs's.
	iops := phase{key: "randread-1", label: "rand read 4K, 1 job, cold", unit: unitIOPS}
	cases := []struct {
		name     string
		variants []variant
	}{
		{"none", nil},
		{"metrics", []variant{metricsOn()}},
		{"names and metrics", []variant{namesOn(), metricsOn()}},
	}
	var want row
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := group{name: "rand", phases: []phase{iops}, variants: c.variants}
			b := &bench{}
			for _, fs := range g.filesystems() {
				b.samples = append(b.samples, samples(g, iops, fs, 900, 1000, 1100)...)
			}
			rows := b.rows([]group{g})
			if len(rows) != 1+len(c.variants) {
				t.Fatalf("%d rows, want %d", len(rows), 1+len(c.variants))
			}
			if i == 0 {
				want = rows[0]
			}
			got := rows[0]
			if got.Label != want.Label || got.Kmsfs != want.Kmsfs || got.Ratio != want.Ratio || got.Target != want.Target || got.Verdict != want.Verdict || got.Variant != "" {
				t.Errorf("plain row %+v, want %+v", got, want)
			}
		})
	}
}

func TestTableVariantRows(t *testing.T) {
	iops := phase{key: "randread-1", label: "rand read 4K, 1 job, cold", unit: unitIOPS}
	g := group{name: "rand", phases: []phase{iops}, variants: []variant{metricsOn()}}
	cases := []struct {
		name    string
		metrics []float64
		want    string // the variant row's cells from "vs off" to the verdict
	}{
		{"ok", []float64{950, 1000, 1050}, "1.00  metrics>=0.90  ok"},
		{"miss", []float64{700, 700, 700}, "0.70  metrics>=0.90  MISS metrics>=0.90"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &bench{scrapes: []scrape{{Group: "rand", Round: 1, Series: 40}, {Group: "rand", Round: 2, Series: 42}}}
			b.samples = append(b.samples, samples(g, iops, fsKmsfs, 950, 1000, 1050)...)
			b.samples = append(b.samples, samples(g, iops, fsKmsfsMetrics, c.metrics...)...)
			b.samples = append(b.samples, samples(g, iops, fsLoop, 1000, 1000, 1000)...)
			out := b.table(b.rows([]group{g}))
			var line string
			for l := range strings.Lines(out) {
				if strings.HasPrefix(l, iops.label+", metrics on ") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no row %q in\n%s", iops.label+", metrics on", out)
			}
			if !strings.Contains(strings.Join(strings.Fields(line), " "), strings.Join(strings.Fields(c.want), " ")) {
				t.Errorf("row %q, want %q in it", line, c.want)
			}
			for _, s := range []string{"vs off", "at least 5%", "2 metrics-on rounds: 40 to 42 kmsfs_ series"} {
				if !strings.Contains(out, s) {
					t.Errorf("table without %q:\n%s", s, out)
				}
			}
		})
	}
}

// daemonLog writes a daemon log with lines and returns its path.
func daemonLog(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kmsfs.log")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestScrapeMetrics(t *testing.T) {
	// The attack on the benchmark: a metrics-on round whose daemon serves
	// no metrics (the flag dropped, the endpoint up but empty) would let
	// metrics-off figures pass for metrics-on ones.
	serve := func(status int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/metrics" {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	good := "# HELP kmsfs_open_files Open files.\n# TYPE kmsfs_open_files gauge\nkmsfs_open_files 0\ngo_goroutines 12\nkmsfs_fuse_ops_total{op=\"READ\"} 3\n"
	cases := []struct {
		name    string
		log     func(addr string) []string
		status  int
		body    string
		series  int
		wantErr string
	}{
		{"text log", func(a string) []string {
			return []string{`level=info msg="AES-GCM implementation" gcm=vaesgcm`, fmt.Sprintf(`level=info msg="metrics: serving /metrics" addr="%s"`, a), `level=info msg=mounted`}
		}, 200, good, 2, ""},
		{"json log", func(a string) []string {
			return []string{fmt.Sprintf(`{"addr":"%s","level":"info","msg":"metrics: serving /metrics"}`, a)}
		}, 200, good, 2, ""},
		{"metrics off", func(string) []string { return []string{`level=info msg=mounted`} }, 200, good, 0, "serves no metrics"},
		{"no kmsfs series", func(a string) []string {
			return []string{fmt.Sprintf(`level=info msg="metrics: serving /metrics" addr=%s`, a)}
		}, 200, "# HELP go_goroutines x\ngo_goroutines 12\n", 0, "no kmsfs_ series"},
		{"error status", func(a string) []string {
			return []string{fmt.Sprintf(`level=info msg="metrics: serving /metrics" addr=%s`, a)}
		}, 500, good, 0, "500"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := serve(c.status, c.body)
			sc, err := scrapeMetrics(context.Background(), daemonLog(t, c.log(addr)...))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("scrape: %v, %+v; want an error with %q", err, sc, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("scrape: %v", err)
			}
			if sc.Addr != addr || sc.Series != c.series {
				t.Errorf("scrape %+v, want addr %s and %d series", sc, addr, c.series)
			}
		})
	}
}

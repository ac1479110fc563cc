package integration_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// imPoolFull is the pool of a per-file volume when full: DefaultPoolFiles
// data keys, one per file.
const imPoolFull = 64

// imBound bounds each wait for the daemon to settle (the pool to refill,
// released handles to arrive).
const imBound = 30 * time.Second

// TestMetrics mounts a per-file volume on awskms (local-kms behind a
// fault-injecting proxy) with --metrics-listen and checks the scrape
// against a known workload: N files written cost exactly N generate calls
// (the pool refilled behind them) and their bytes; after a remount, N
// files read cost exactly N unwraps (N cache misses) and their bytes; open
// files come back to 0. Then the attacks and failures an operator must see
// on a dashboard: a block of a file edited in the cipher dir is counted
// once in the auth-failure counter when it is read; a KMS that refuses
// (key disabled) shows as an unwrap with outcome denied. The endpoint
// serves nothing but /metrics, and a port in use fails the mount with a
// message that says so.
func TestMetrics(t *testing.T) {
	e := fusetest.KMS(t)
	kp := kmstest.NewProxy(t, e.Endpoint)
	v := suite.InitVolume(t, fusetest.CLIOptions{
		Keys:     []string{"awskms:" + kmstest.Alias},
		InitArgs: []string{"--data-key-policy", "per-file", "--plaintext-names"},
		Env:      fusetest.AWSEnvAt(e, kp.URL),
	})
	const n = 5
	names := make([]string, n)
	plain := map[string][]byte{}
	var total float64
	for i := range names {
		names[i] = fmt.Sprintf("f%d", i)
		plain[names[i]] = ftBytes(ftRand(uint64(4200+i)), 3*4096+1000*i+17)
		total += float64(len(plain[names[i]]))
	}

	addr := imMount(t, v)
	t.Run("write", func(t *testing.T) {
		before := imScrape(t, addr)
		// A clean volume: the journal had nothing to finish at mount.
		if n, ok := before["kmsfs_journal_records_replayed_total"]; !ok || n != 0 {
			t.Errorf("kmsfs_journal_records_replayed_total = %v (exposed: %v), want 0", n, ok)
		}
		for _, name := range names {
			if err := os.WriteFile(v.Path(name), plain[name], 0o644); err != nil {
				t.Fatalf("write %s: %v", name, err)
			}
		}
		after := imSettle(t, addr)
		for _, c := range []struct {
			metric string
			want   float64
		}{
			{`kmsfs_key_source_calls_total{op="generate",outcome="ok",source="awskms"}`, n},
			{`kmsfs_key_source_calls_total{op="unwrap",outcome="ok",source="awskms"}`, 0},
			{`kmsfs_key_source_call_duration_seconds_count{op="generate",source="awskms"}`, n},
			{`kmsfs_written_bytes_total`, total},
			{`kmsfs_fuse_request_duration_seconds_count{op="create"}`, n},
			{`kmsfs_auth_failures_total`, 0},
		} {
			if d := after.get(t, c.metric) - before.get(t, c.metric); d != c.want {
				t.Errorf("%s grew by %v, want %v", c.metric, d, c.want)
			}
		}
	})

	v.Unmount(t)
	addr = imMount(t, v) // nothing cached from here on
	t.Run("read-after-remount", func(t *testing.T) {
		before := imScrape(t, addr)
		for _, name := range names {
			got, err := os.ReadFile(v.Path(name))
			if err != nil || string(got) != string(plain[name]) {
				t.Fatalf("read %s: %v (%d bytes, want %d)", name, err, len(got), len(plain[name]))
			}
		}
		after := imSettle(t, addr)
		for _, c := range []struct {
			metric string
			want   float64
		}{
			{`kmsfs_key_source_calls_total{op="unwrap",outcome="ok",source="awskms"}`, n},
			{`kmsfs_data_key_cache_misses_total`, n},
			{`kmsfs_key_source_calls_total{op="generate",outcome="ok",source="awskms"}`, 0},
			{`kmsfs_read_bytes_total`, total},
			{`kmsfs_written_bytes_total`, 0},
			{`kmsfs_fuse_request_duration_seconds_count{op="open"}`, n},
		} {
			if d := after.get(t, c.metric) - before.get(t, c.metric); d != c.want {
				t.Errorf("%s grew by %v, want %v", c.metric, d, c.want)
			}
		}
	})

	v.Unmount(t)
	l := ftReadLayout(t, v.Cipher)
	ftFlip(t, v.CipherPath(names[0]), l.Off(1)+20) // block 1 of f0, edited behind kmsfs's back
	addr = imMount(t, v)
	t.Run("attack=edited-block", func(t *testing.T) {
		before := imScrape(t, addr)
		blocks, err := ftReadBlocks(v.Path(names[0]), int(l.BS))
		if err != nil {
			t.Fatal(err)
		}
		if len(blocks.Bad) != 1 || mntErrno(blocks.Bad[1]) != syscall.EIO {
			t.Fatalf("failed blocks %v, want block 1 with EIO", blocks.Bad)
		}
		after := imSettle(t, addr)
		if d := after.get(t, "kmsfs_auth_failures_total") - before.get(t, "kmsfs_auth_failures_total"); d != 1 {
			t.Errorf("kmsfs_auth_failures_total grew by %v, want 1", d)
		}
		for k := range after {
			if strings.HasPrefix(k, "kmsfs_auth_failures_total{") {
				t.Errorf("auth failures carry labels: %s", k)
			}
		}
	})

	t.Run("kms=key-disabled", func(t *testing.T) {
		before := imScrape(t, addr)
		kp.FailNext(100, kmstest.ErrorStatus("DisabledException"), "DisabledException")
		_, err := os.ReadFile(v.Path(names[1])) // its key is not cached in this mount
		kp.FailNext(0, 0, "")
		if err == nil {
			t.Fatalf("read %s succeeded while KMS refused every call", names[1])
		}
		after := imSettle(t, addr)
		m := `kmsfs_key_source_calls_total{op="unwrap",outcome="denied",source="awskms"}`
		if d := after.get(t, m) - before.get(t, m); d != 1 {
			t.Errorf("%s grew by %v, want 1", m, d)
		}
		ok := `kmsfs_key_source_calls_total{op="unwrap",outcome="ok",source="awskms"}`
		if d := after.get(t, ok) - before.get(t, ok); d != 0 {
			t.Errorf("%s grew by %v, want 0", ok, d)
		}
	})

	t.Run("paths", func(t *testing.T) {
		for _, c := range []struct {
			path string
			want int
		}{
			{"/metrics", http.StatusOK},
			{"/", http.StatusNotFound},
			{"/debug/pprof/", http.StatusNotFound},
			{"/metricsx", http.StatusNotFound},
		} {
			t.Run("path="+c.path, func(t *testing.T) {
				resp, err := http.Get("http://" + addr + c.path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != c.want {
					t.Errorf("GET %s: status %d, want %d", c.path, resp.StatusCode, c.want)
				}
			})
		}
	})

	v.Unmount(t)
	t.Run("port-in-use", func(t *testing.T) {
		held, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		out, err := v.TryMount(t, "--metrics-listen", held.Addr().String())
		if err == nil {
			t.Fatalf("mount succeeded with the metrics port %s taken", held.Addr())
		}
		for _, want := range []string{"--metrics-listen", held.Addr().String(), "address already in use"} {
			if !strings.Contains(out, want) {
				t.Errorf("mount error does not say %q:\n%s", want, out)
			}
		}
		if fusetest.IsMounted(t, v.Mnt) {
			t.Errorf("%s is mounted although the mount failed", v.Mnt)
		}
	})
}

// imMount mounts v with metrics on a port the kernel picks and returns
// the address the daemon logged.
func imMount(t *testing.T, v *fusetest.CLIVolume) string {
	t.Helper()
	mark := v.LogMark()
	v.Mount(t, "--metrics-listen", "127.0.0.1:0")
	for _, l := range v.LogSince(mark) {
		if l.F["msg"] == "metrics: serving /metrics" {
			return l.F["addr"]
		}
	}
	t.Fatalf("the mount logged no metrics address:\n%s", v.LogText())
	return ""
}

// imSamples is one scrape: value by `name{labels}` as exposed.
type imSamples map[string]float64

// get returns the sample's value; a labelled counter not yet incremented
// is absent and counts as 0.
func (s imSamples) get(t *testing.T, key string) float64 {
	t.Helper()
	return s[key]
}

// imScrape fetches and parses /metrics.
func imScrape(t *testing.T, addr string) imSamples {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: status %d: %s", resp.StatusCode, b)
	}
	s := imSamples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("scrape: malformed line %q", line)
		}
		f, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: line %q: %v", line, err)
		}
		s[line[:i]] = f
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return s
}

// imSettle waits until the daemon is at rest, the pool full again and
// every handle released (the kernel sends RELEASE after close(2) returns),
// and returns the scrape that shows it. A pool refill past full or a
// handle never released times out and fails.
func imSettle(t *testing.T, addr string) imSamples {
	t.Helper()
	var s imSamples
	fusetest.Eventually(t, "pool full and no file open", imBound, func() bool {
		s = imScrape(t, addr)
		return s["kmsfs_data_key_pool_ready"] == imPoolFull && s["kmsfs_open_files"] == 0
	})
	return s
}

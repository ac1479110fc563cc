package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/metrics"
	"github.com/kmsfs/kmsfs/keysource"
)

// apiError is an error with a service error code, as AWS API errors have.
type apiError struct{ code string }

func (e apiError) Error() string     { return "api error " + e.code }
func (e apiError) ErrorCode() string { return e.code }

// kindError wraps a sentinel and the service's own error, as the awskms
// source does.
type kindError struct{ kind, cause error }

func (e kindError) Error() string   { return e.kind.Error() + ": " + e.cause.Error() }
func (e kindError) Unwrap() []error { return []error{e.kind, e.cause} }

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, metrics.OutcomeOK},
		{fmt.Errorf("x: %w", keysource.ErrDenied), metrics.OutcomeDenied},
		{fmt.Errorf("x: %w", keysource.ErrUnavailable), metrics.OutcomeUnavailable},
		{fmt.Errorf("x: %w", keysource.ErrInvalid), metrics.OutcomeInvalid},
		{fmt.Errorf("x: %w", keysource.ErrNotMine), metrics.OutcomeNotMine},
		{kindError{keysource.ErrUnavailable, apiError{"ThrottlingException"}}, metrics.OutcomeThrottled},
		{kindError{keysource.ErrUnavailable, apiError{"LimitExceededException"}}, metrics.OutcomeThrottled},
		{kindError{keysource.ErrInvalid, apiError{"NotFoundException"}}, metrics.OutcomeNotFound},
		{kindError{keysource.ErrDenied, apiError{"DisabledException"}}, metrics.OutcomeDenied},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), metrics.OutcomeTimeout},
		{fmt.Errorf("x: %w", context.Canceled), metrics.OutcomeCanceled},
		{errors.New("something else"), metrics.OutcomeError},
	} {
		t.Run(fmt.Sprintf("err=%v", tc.err), func(t *testing.T) {
			if got := metrics.Outcome(tc.err); got != tc.want {
				t.Errorf("Outcome = %q, want %q", got, tc.want)
			}
		})
	}
}

// value returns the value of the sample of family name whose labels are
// labels ("k=v,k=v"; "" for none): a counter, gauge, or a histogram's count.
func value(t *testing.T, m *metrics.Metrics, name, labels string) float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if labelString(s) != labels {
				continue
			}
			switch {
			case s.Counter != nil:
				return s.Counter.GetValue()
			case s.Gauge != nil:
				return s.Gauge.GetValue()
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount())
			}
		}
	}
	return -1
}

func labelString(s *dto.Metric) string {
	var parts []string
	for _, l := range s.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

func TestObservers(t *testing.T) {
	m := metrics.New()
	m.KeyCall("awskms", keysource.OpGenerate, time.Millisecond, nil)
	m.KeyCall("awskms", keysource.OpGenerate, time.Millisecond, nil)
	m.KeyCall("awskms", keysource.OpUnwrap, time.Second, fmt.Errorf("x: %w", keysource.ErrDenied))
	m.CacheLookup(true)
	m.CacheLookup(false)
	m.CacheLookup(false)
	m.CacheEvict()
	m.PoolDepth(7)
	m.Op(fs.OpRead, time.Microsecond)
	m.Op(fs.OpRead, time.Microsecond)
	m.Op(fs.OpWrite, time.Microsecond)
	m.BytesRead(100)
	m.BytesWritten(4096)
	m.FileOpened()
	m.FileOpened()
	m.FileReleased()
	m.AuthFailure()
	m.JournalReplayed(3)
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"kmsfs_key_source_calls_total", "op=generate,outcome=ok,source=awskms", 2},
		{"kmsfs_key_source_calls_total", "op=unwrap,outcome=denied,source=awskms", 1},
		{"kmsfs_key_source_call_duration_seconds", "op=generate,source=awskms", 2},
		{"kmsfs_key_source_call_duration_seconds", "op=unwrap,source=awskms", 1},
		{"kmsfs_data_key_cache_hits_total", "", 1},
		{"kmsfs_data_key_cache_misses_total", "", 2},
		{"kmsfs_data_key_cache_evictions_total", "", 1},
		{"kmsfs_data_key_pool_ready", "", 7},
		{"kmsfs_fuse_request_duration_seconds", "op=read", 2},
		{"kmsfs_fuse_request_duration_seconds", "op=write", 1},
		{"kmsfs_fuse_request_duration_seconds", "op=lookup", 0},
		{"kmsfs_read_bytes_total", "", 100},
		{"kmsfs_written_bytes_total", "", 4096},
		{"kmsfs_open_files", "", 1},
		{"kmsfs_auth_failures_total", "", 1},
		{"kmsfs_journal_records_replayed_total", "", 3},
	} {
		t.Run(tc.name+"{"+tc.labels+"}", func(t *testing.T) {
			if got := value(t, m, tc.name, tc.labels); got != tc.want {
				t.Errorf("= %v, want %v", got, tc.want)
			}
		})
	}
}

// TestHotPathAllocs checks that what a READ or WRITE costs the metrics
// allocates nothing.
func TestHotPathAllocs(t *testing.T) {
	m := metrics.New()
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"op=read", func() { m.Op(fs.OpRead, time.Microsecond) }},
		{"op=write", func() { m.Op(fs.OpWrite, time.Microsecond) }},
		{"bytes-read", func() { m.BytesRead(4096) }},
		{"bytes-written", func() { m.BytesWritten(4096) }},
		{"open-release", func() { m.FileOpened(); m.FileReleased() }},
		{"cache-hit", func() { m.CacheLookup(true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
				t.Errorf("%v allocations per call, want 0", n)
			}
		})
	}
}

func TestHandlerServesOnlyMetrics(t *testing.T) {
	srv := httptest.NewServer(metrics.New().Handler())
	defer srv.Close()
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/metrics", http.StatusOK},
		{"/", http.StatusNotFound},
		{"/debug/pprof/", http.StatusNotFound},
		{"/metrics/x", http.StatusNotFound},
	} {
		t.Run("path="+tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == http.StatusOK && !strings.Contains(string(body), "kmsfs_open_files 0") {
				t.Errorf("body lacks kmsfs_open_files:\n%s", body)
			}
		})
	}
}

func TestListen(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tc := range []struct {
		addr    string
		inUse   bool
		wantErr bool
	}{
		{"127.0.0.1:0", false, false},
		{held.Addr().String(), true, true},
		{"127.0.0.1:notaport", false, true},
	} {
		t.Run("addr="+tc.addr, func(t *testing.T) {
			s, err := metrics.New().Listen(tc.addr)
			if tc.wantErr {
				if err == nil {
					s.Close()
					t.Fatal("Listen succeeded")
				}
				if tc.inUse && !errors.Is(err, syscall.EADDRINUSE) {
					t.Errorf("error %v, want EADDRINUSE", err)
				}
				if !strings.HasPrefix(err.Error(), "metrics: ") || !strings.Contains(err.Error(), tc.addr) {
					t.Errorf("error %q does not start with metrics: and name %s", err, tc.addr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d", resp.StatusCode)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:9464", true},
		{"127.0.0.2:9464", true},
		{"[::1]:9464", true},
		{"localhost:9464", true},
		{":9464", false},
		{"0.0.0.0:9464", false},
		{"10.0.0.1:9464", false},
		{"example.com:9464", false},
		{"127.0.0.1", false},
	} {
		t.Run("addr="+tc.addr, func(t *testing.T) {
			if got := metrics.IsLoopback(tc.addr); got != tc.want {
				t.Errorf("IsLoopback = %v, want %v", got, tc.want)
			}
		})
	}
}

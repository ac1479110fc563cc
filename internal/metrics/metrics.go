// Package metrics owns the Prometheus metrics of a kmsfs mount: it
// implements the observer hooks of the data-key manager
// (keysource.Observer) and of the filesystem (fs.Observer) with
// client_golang types in a registry of its own, and serves them on
// /metrics. The packages it observes stay free of Prometheus.
//
// Labels are bounded by construction: key-source type, operation and
// outcome class for key calls, the FUSE request kind for requests;
// nothing names a file, a path or a key ID.
package metrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keysource"
)

// Outcome classes of a key-source call, the outcome label of
// kmsfs_key_source_calls_total.
const (
	OutcomeOK          = "ok"
	OutcomeThrottled   = "throttled"   // the service asked us to slow down
	OutcomeDenied      = "denied"      // access denied, key disabled or pending deletion
	OutcomeNotFound    = "not_found"   // no such key or alias
	OutcomeNotMine     = "not_mine"    // the stanza belongs to another key
	OutcomeInvalid     = "invalid"     // malformed or unauthentic stanza, wrong key usage
	OutcomeUnavailable = "unavailable" // service unreachable or failing
	OutcomeTimeout     = "timeout"     // the call's deadline passed
	OutcomeCanceled    = "canceled"    // the caller gave up (or the mount closed)
	OutcomeError       = "error"       // anything else
)

// Metrics is the metrics of one mount and their registry. Its observer
// methods are safe for concurrent use and never block; the FUSE request
// path costs one histogram Observe and no allocation.
type Metrics struct {
	reg *prometheus.Registry

	keyCalls   *prometheus.CounterVec
	keySeconds *prometheus.HistogramVec

	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	cacheEvicts prometheus.Counter
	poolReady   prometheus.Gauge

	authFailures prometheus.Counter
	readBytes    prometheus.Counter
	writtenBytes prometheus.Counter
	openFiles    prometheus.Gauge
	replayed     prometheus.Counter

	// ops holds one histogram child per request kind, resolved once so
	// that observing a request looks up no label.
	ops [fs.NumOps]prometheus.Observer
}

var (
	_ keysource.Observer = (*Metrics)(nil)
	_ fs.Observer        = (*Metrics)(nil)
)

// New returns the metrics of a mount, registered with a registry of their
// own together with the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.keyCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kmsfs_key_source_calls_total",
		Help: "Calls to key sources by source type, operation (wrap, unwrap, generate) and outcome class.",
	}, []string{"source", "op", "outcome"})
	m.keySeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kmsfs_key_source_call_duration_seconds",
		Help: "Latency of key-source calls by source type and operation, whatever the outcome.",
		// From a local key (microseconds) to a KMS retrying with backoff
		// (seconds).
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"source", "op"})
	m.cacheHits = counter("kmsfs_data_key_cache_hits_total",
		"Unwraps of a file's data key answered from the cache.")
	m.cacheMisses = counter("kmsfs_data_key_cache_misses_total",
		"Unwraps of a file's data key not in the cache (a key-source call, or a wait for one running).")
	m.cacheEvicts = counter("kmsfs_data_key_cache_evictions_total",
		"Data keys dropped from the cache for room or age.")
	m.poolReady = gauge("kmsfs_data_key_pool_ready",
		"Pre-generated data keys ready for new files.")
	m.authFailures = counter("kmsfs_auth_failures_total",
		"Reads and opens that failed because a stored block or header did not authenticate (tampering or corruption).")
	m.readBytes = counter("kmsfs_read_bytes_total",
		"Plaintext bytes read through the mount.")
	m.writtenBytes = counter("kmsfs_written_bytes_total",
		"Plaintext bytes written through the mount.")
	m.openFiles = gauge("kmsfs_open_files",
		"File handles open on the mount.")
	m.replayed = counter("kmsfs_journal_records_replayed_total",
		"Interrupted writes the journal finished or undid when the volume was mounted.")
	opSeconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kmsfs_fuse_request_duration_seconds",
		Help: "Time kmsfs took to answer FUSE requests, by request kind; _count is the requests served.",
		// From a cached getattr (microseconds) to a create or open that
		// waits on the key service (seconds).
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
	}, []string{"op"})
	for op := range fs.NumOps {
		m.ops[op] = opSeconds.WithLabelValues(op.String())
	}
	m.reg.MustRegister(m.keyCalls, m.keySeconds, m.cacheHits, m.cacheMisses, m.cacheEvicts, m.poolReady,
		m.authFailures, m.readBytes, m.writtenBytes, m.openFiles, m.replayed, opSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// Registry returns the registry the metrics are in, for a caller that
// gathers them itself.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// KeyCall counts a key-source call by its outcome class and observes its
// latency (keysource.Observer).
func (m *Metrics) KeyCall(source, op string, d time.Duration, err error) {
	m.keyCalls.WithLabelValues(source, op, Outcome(err)).Inc()
	m.keySeconds.WithLabelValues(source, op).Observe(d.Seconds())
}

// CacheLookup counts a data-key cache hit or miss (keysource.Observer).
func (m *Metrics) CacheLookup(hit bool) {
	if hit {
		m.cacheHits.Inc()
	} else {
		m.cacheMisses.Inc()
	}
}

// CacheEvict counts a data key evicted from the cache (keysource.Observer).
func (m *Metrics) CacheEvict() { m.cacheEvicts.Inc() }

// PoolDepth sets the number of ready pre-generated data keys
// (keysource.Observer).
func (m *Metrics) PoolDepth(n int) { m.poolReady.Set(float64(n)) }

// Op observes one FUSE request's time (fs.Observer).
func (m *Metrics) Op(op fs.Op, d time.Duration) {
	if op < fs.NumOps {
		m.ops[op].Observe(d.Seconds())
	}
}

// BytesRead counts plaintext bytes read (fs.Observer).
func (m *Metrics) BytesRead(n int) { m.readBytes.Add(float64(n)) }

// BytesWritten counts plaintext bytes written (fs.Observer).
func (m *Metrics) BytesWritten(n int) { m.writtenBytes.Add(float64(n)) }

// FileOpened counts a file handle opened (fs.Observer).
func (m *Metrics) FileOpened() { m.openFiles.Inc() }

// FileReleased counts a file handle released (fs.Observer).
func (m *Metrics) FileReleased() { m.openFiles.Dec() }

// AuthFailure counts a read or open that failed authentication
// (fs.Observer).
func (m *Metrics) AuthFailure() { m.authFailures.Inc() }

// JournalReplayed counts n interrupted writes the journal recovered at
// mount.
func (m *Metrics) JournalReplayed(n int) { m.replayed.Add(float64(n)) }

// Outcome returns the outcome class of a key-source call's error: OutcomeOK
// for nil, else the most specific class the error chain shows.
func Outcome(err error) string {
	if err == nil {
		return OutcomeOK
	}
	// The service's own error code, where a source keeps it in the chain
	// (AWS API errors do), tells throttling and missing keys apart from
	// the sentinel they map to.
	var coded interface{ ErrorCode() string }
	if errors.As(err, &coded) {
		switch c := coded.ErrorCode(); {
		case strings.Contains(c, "Throttl") || c == "LimitExceededException" || c == "TooManyRequestsException":
			return OutcomeThrottled
		case c == "NotFoundException":
			return OutcomeNotFound
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	case errors.Is(err, keysource.ErrDenied):
		return OutcomeDenied
	case errors.Is(err, keysource.ErrNotMine):
		return OutcomeNotMine
	case errors.Is(err, keysource.ErrUnavailable):
		return OutcomeUnavailable
	case errors.Is(err, keysource.ErrInvalid):
		return OutcomeInvalid
	}
	return OutcomeError
}

package kmstest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// MaxLatency bounds the latency a Proxy may add to one request.
const MaxLatency = 5 * time.Second

const maxRequestBody = 1 << 20 // far above any KMS request

// Proxy is a loopback HTTP proxy in front of the emulator. It can delay
// every request by a fixed latency, and answer the next n requests with a
// KMS error (ThrottlingException, say) instead of forwarding them. Point a
// client at URL. A Proxy is safe for concurrent use; it closes when its test
// ends, cutting any delayed request short.
type Proxy struct {
	URL string // "http://127.0.0.1:PORT"

	mu         sync.Mutex
	latency    time.Duration
	failN      int
	failStatus int
	failCode   string
	failed     int
	requests   map[string]int // by operation, forwarded or not
}

// NewProxy starts a proxy on 127.0.0.1 forwarding to target (an emulator's
// Endpoint) and registers its shutdown with t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("kmstest: proxy target: %v", err)
	}
	p := &Proxy{requests: map[string]int{}}
	transport := &http.Transport{MaxIdleConnsPerHost: 64} // its own pool, closed with the proxy
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: transport,
		// A client that gave up (a test's deadline) is no news: answer
		// 502 without logging.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	closing := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body first: only then does the server watch the
		// connection, and cancel r's context when the client gives up.
		reqBody, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(reqBody))
		delay, status, code := p.next(operation(r))
		if delay > 0 {
			timer := time.NewTimer(delay)
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
				return
			case <-closing:
				timer.Stop()
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		}
		if code != "" {
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"__type":%q,"message":"injected by kmstest.Proxy"}`, code)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(closing) // cut delayed requests short
		srv.Close()
		transport.CloseIdleConnections()
	})
	p.URL = srv.URL
	return p
}

// operation returns the KMS operation a request names in X-Amz-Target
// ("TrentService.Decrypt" -> "Decrypt").
func operation(r *http.Request) string {
	t := r.Header.Get("X-Amz-Target")
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

// next records a request and says how long to delay it and which error, if
// any, to answer with.
func (p *Proxy) next(op string) (time.Duration, int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests[op]++
	if p.failN > 0 {
		p.failN--
		p.failed++
		return p.latency, p.failStatus, p.failCode
	}
	return p.latency, 0, ""
}

// SetLatency makes every later request wait d before it is answered.
// It panics if d is negative or above MaxLatency.
func (p *Proxy) SetLatency(d time.Duration) {
	if d < 0 || d > MaxLatency {
		panic(fmt.Sprintf("kmstest: proxy latency %v outside [0, %v]", d, MaxLatency))
	}
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// FailNext makes the next n requests answer with HTTP status and the KMS
// error code (400 and "ThrottlingException", say, as KMS throttles)
// instead of reaching the emulator.
func (p *Proxy) FailNext(n, status int, code string) {
	p.mu.Lock()
	p.failN, p.failStatus, p.failCode = n, status, code
	p.mu.Unlock()
}

// Failed returns how many requests were answered with an injected error.
func (p *Proxy) Failed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// Requests returns how many requests for op reached the proxy.
func (p *Proxy) Requests(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[op]
}

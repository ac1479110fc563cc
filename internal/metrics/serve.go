package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler returns the HTTP handler that serves the metrics on /metrics in
// the Prometheus exposition formats, and 404 on every other path.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A scrape already in progress is enough: a slow scraper must not
		// pile up goroutines in the daemon.
		MaxRequestsInFlight: 4,
	}))
	return mux
}

// Server serves a Metrics over HTTP on one listener.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port; port 0 picks a free one) and serves the
// metrics on it in the background. The listener is bound when Listen
// returns, so a scraper can connect at once; an address in use fails here.
// Close the Server to stop.
func (m *Metrics) Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, srv: &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}}
	go s.srv.Serve(ln)
	return s, nil
}

// Addr returns the address the Server listens on (with the port picked for
// port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the Server and closes its connections.
func (s *Server) Close() error {
	if err := s.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("metrics: close %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// IsLoopback reports whether addr (host:port) names a loopback address:
// "localhost", 127.0.0.0/8 or ::1. An empty host (all interfaces) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

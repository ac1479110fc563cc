package main

import (
	"github.com/sirupsen/logrus"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/metrics"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// mountMetrics is a mount's --metrics-listen endpoint and the metrics it
// serves; a nil *mountMetrics (no --metrics-listen) observes nothing.
type mountMetrics struct {
	m   *metrics.Metrics
	srv *metrics.Server
}

// startMetrics serves the mount's metrics on addr, or returns nil if addr
// is "". The listener is bound before it returns, so it is up before the
// mount reports ready, and an address in use fails the mount before any
// key is touched. An address that is not loopback is served as given (the
// operator chose it) with a warning: it shows the mount's activity to the
// network.
func startMetrics(log *logrus.Entry, addr string) (*mountMetrics, error) {
	if addr == "" {
		return nil, nil
	}
	m := metrics.New()
	srv, err := m.Listen(addr)
	if err != nil {
		return nil, err
	}
	l := log.WithField("addr", srv.Addr().String())
	if !metrics.IsLoopback(addr) {
		l.Warn("metrics: serving on an address that is not loopback: anyone who can reach it sees the mount's activity")
	}
	l.Info("metrics: serving /metrics")
	return &mountMetrics{m: m, srv: srv}, nil
}

// keyObserver returns what the data-key manager reports to, or nil.
func (mm *mountMetrics) keyObserver() keysource.Observer {
	if mm == nil {
		return nil
	}
	return mm.m
}

// fsObserver returns what the filesystem reports to, or nil.
func (mm *mountMetrics) fsObserver() kfs.Observer {
	if mm == nil {
		return nil
	}
	return mm.m
}

// opened counts what the journal recovered when the volume opened.
func (mm *mountMetrics) opened(v *volume.Volume) {
	if mm != nil {
		mm.m.JournalReplayed(v.Recovery.Recovered)
	}
}

// Close stops the endpoint.
func (mm *mountMetrics) Close() {
	if mm != nil {
		mm.srv.Close()
	}
}

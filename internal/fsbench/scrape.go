package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// scrapeTimeout bounds one scrape of a daemon's metrics endpoint.
const scrapeTimeout = 10 * time.Second

// scrape is one read of a metrics-on daemon's endpoint, at the end of a
// round.
type scrape struct {
	Group  string `json:"group"`
	Round  int    `json:"round"`
	Addr   string `json:"addr"`
	Series int    `json:"kmsfs_series"` // sample lines of kmsfs_ metrics
}

// addrField is the address in kmsfs's "metrics: serving /metrics" log
// line, logged as text (addr=127.0.0.1:1234 or addr="[::1]:1234") or JSON
// ("addr":"127.0.0.1:1234").
var addrField = regexp.MustCompile(`\baddr"?[=:]"?([^"\s,}]+)`)

// metricsAddr returns the address the daemon logged in logPath that it
// serves its metrics on.
func metricsAddr(logPath string) (string, error) {
	line, ok := findLine(logPath, "metrics: serving")
	if !ok {
		return "", fmt.Errorf("%s: no \"metrics: serving\" line: the daemon serves no metrics", logPath)
	}
	m := addrField.FindStringSubmatch(line)
	if m == nil {
		return "", fmt.Errorf("%s: no address in %q", logPath, line)
	}
	return m[1], nil
}

// scrapeMetrics reads the metrics endpoint of the daemon that logs to
// logPath and fails unless it answers with kmsfs_ series: rows measured
// on a mount whose metrics were silently off would say nothing about
// their cost.
func scrapeMetrics(ctx context.Context, logPath string) (scrape, error) {
	addr, err := metricsAddr(logPath)
	if err != nil {
		return scrape{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	url := "http://" + addr + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return scrape{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return scrape{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return scrape{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return scrape{}, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	n := kmsfsSeries(body)
	if n == 0 {
		return scrape{}, fmt.Errorf("scrape %s: no kmsfs_ series in %d bytes", url, len(body))
	}
	return scrape{Addr: addr, Series: n}, nil
}

// kmsfsSeries counts the sample lines of kmsfs_ metrics in a Prometheus
// text exposition (comments and other metrics not counted).
func kmsfsSeries(body []byte) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "kmsfs_") {
			n++
		}
	}
	return n
}

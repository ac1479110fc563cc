package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// fioCommon are the options of every fio job: buffered I/O through the
// page cache (--direct=0) with one pread/pwrite per I/O, no preallocation
// (kmsfs and the loopback would answer fallocate differently), and the
// file's cached pages dropped when fio opens it (--invalidate=1).
var fioCommon = []string{"--ioengine=psync", "--direct=0", "--fallocate=none", "--invalidate=1", "--group_reporting"}

// fioStats is one direction of a fio job's JSON report.
type fioStats struct {
	IOBytes  int64   `json:"io_bytes"`
	BWBytes  float64 `json:"bw_bytes"` // bytes per second
	IOPS     float64 `json:"iops"`
	TotalIOs int64   `json:"total_ios"`
}

// detail is the phase detail of s: bytes and I/Os done.
func (s fioStats) detail() map[string]float64 {
	return map[string]float64{"io_bytes": float64(s.IOBytes), "ios": float64(s.TotalIOs)}
}

type fioReport struct {
	Jobs []struct {
		Name  string   `json:"jobname"`
		Error int      `json:"error"`
		Read  fioStats `json:"read"`
		Write fioStats `json:"write"`
	} `json:"jobs"`
}

// runFio runs one fio job (group-reported) with fioCommon and args and
// returns its read and write statistics. The JSON report goes to a file
// in scratch, outside the mounts. The run is bounded by ctx and fioLimit.
func runFio(ctx context.Context, scratch string, args ...string) (read, write fioStats, err error) {
	ctx, cancel := context.WithTimeout(ctx, fioLimit)
	defer cancel()
	report := filepath.Join(scratch, "fio.json")
	os.Remove(report)
	full := append(append([]string{"--output-format=json", "--output=" + report}, fioCommon...), args...)
	cmd := exec.CommandContext(ctx, "fio", full...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("%w (fio did not finish within %v)", err, fioLimit)
		}
		return read, write, fmt.Errorf("fio %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		return read, write, err
	}
	// fio may print notices before the JSON document.
	if i := strings.IndexByte(string(raw), '{'); i > 0 {
		raw = raw[i:]
	}
	var r fioReport
	if err := json.Unmarshal(raw, &r); err != nil {
		return read, write, fmt.Errorf("fio report: %w", err)
	}
	if len(r.Jobs) != 1 {
		return read, write, fmt.Errorf("fio report: %d job groups, want 1", len(r.Jobs))
	}
	if e := r.Jobs[0].Error; e != 0 {
		return read, write, fmt.Errorf("fio job %s: error %d\n%s", r.Jobs[0].Name, e, out)
	}
	return r.Jobs[0].Read, r.Jobs[0].Write, nil
}

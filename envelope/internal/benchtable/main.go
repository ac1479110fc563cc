// Command benchtable reads `go test -bench` output of the envelope
// benchmarks on stdin and prints one table: median throughput per
// operation, block size and request size, for the serial and parallel
// paths, their ratio, and the ratio of the serial path to raw AES-GCM.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/kmsfs/kmsfs/internal/benchfmt"
)

// BenchmarkSeal/bs=4096/size=4KiB/mode=serial-2  1000  1149 ns/op  3563.32 MB/s  0 B/op  0 allocs/op
var line = regexp.MustCompile(`^Benchmark(\w+)/(?:op=(\w+)/)?bs=(\d+)/size=(\w+)/mode=(\w+)(?:-\d+)?\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) MB/s(?:\s+\d+ B/op\s+(\d+) allocs/op)?`)

type key struct{ op, bs, size string }

func main() {
	mbs := map[key]map[string][]float64{}
	allocs := map[key]map[string]string{}
	var order []key
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		op := m[1]
		if m[2] != "" {
			op += "." + m[2]
		}
		k := key{op, m[3], m[4]}
		if op == "RawGCM" {
			k.op = "raw"
		}
		if mbs[k] == nil {
			mbs[k], allocs[k] = map[string][]float64{}, map[string]string{}
			if k.op != "raw" {
				order = append(order, k)
			}
		}
		v, _ := strconv.ParseFloat(m[6], 64)
		mbs[k][m[5]] = append(mbs[k][m[5]], v)
		allocs[k][m[5]] = m[7]
	}
	fmt.Printf("%-17s %6s %7s %12s %12s %8s %10s %8s %14s\n",
		"benchmark", "bs", "size", "serial MB/s", "parallel MB/s", "par/ser", "raw MB/s", "ser/raw", "allocs ser/par")
	for _, k := range order {
		ser, par := benchfmt.Median(mbs[k]["serial"]), benchfmt.Median(mbs[k]["parallel"])
		raw := benchfmt.Median(mbs[key{"raw", k.bs, k.size}]["raw"])
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", a/b)
		}
		rawCol, serRaw := "-", "-"
		if !strings.Contains(k.op, ".") {
			rawCol, serRaw = fmt.Sprintf("%.0f", raw), ratio(ser, raw)
		}
		num := func(v float64) string {
			if v == 0 {
				return "-" // not measured (FileTmpfs.pread has no parallel mode)
			}
			return fmt.Sprintf("%.0f", v)
		}
		al := allocs[k]["serial"]
		if par != 0 {
			al += "/" + allocs[k]["parallel"]
		}
		fmt.Printf("%-17s %6s %7s %12s %12s %8s %10s %8s %14s\n", k.op, k.bs, k.size, num(ser), num(par),
			ratio(par, ser), rawCol, serRaw, al)
	}
}

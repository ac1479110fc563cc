#!/bin/bash
# fuse-requests.sh PHASES — one round of `fsbench` for the groups PHASES
# (e.g. small, untar, seq) under `perf record` of the kernel's FUSE
# tracepoints (fuse:fuse_request_send / fuse_request_end, Linux 6.16+), then
# per mount (FUSE_INIT starts one) the number of requests per opcode and
# their mean time from send to reply (queueing in the kernel included).
# Mounts come in run order: round 1 runs kmsfs first, then the loopback; the
# small group remounts each filesystem once (the cold read), so it shows
# four mounts: kmsfs create, kmsfs read+remove, loopback create, loopback
# read+remove. Run from the repository root as root after `make bench-fs`
# has built bin/.
set -euo pipefail
phases=${1:?usage: $0 PHASES}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$out/fuse.perf" 2>/dev/null &
rec=$!
sleep 1
BENCH_ROUNDS=1 BENCH_PHASES=$phases bin/fsbench -kmsfs bin/kmsfs -loopbackfs bin/loopbackfs -out "$out" 2>&1 | grep '^fsbench:  ' || true
kill -INT $rec
wait $rec || true
perf script -i "$out/fuse.perf" -F time,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
mount, start = 0, {}
count, total = collections.Counter(), collections.Counter()
pat = re.compile(r"\s*([\d.]+):\s+fuse:(fuse_request_\w+):\s+connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in sys.stdin:
    m = pat.match(line)
    if not m:
        continue
    t, ev, req, op = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if ev == "fuse_request_send":
        if op == "FUSE_INIT":
            mount += 1
        start[req] = (t, op, mount)
    elif req in start:
        t0, op, mt = start.pop(req)
        count[(mt, op)] += 1
        total[(mt, op)] += t - t0
print("mount  opcode              requests  mean us")
for k in sorted(count):
    if count[k] >= 50:
        print("%5d  %-18s %9d %8.1f" % (k[0], k[1], count[k], total[k] / count[k] * 1e6))
'

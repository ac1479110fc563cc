#!/bin/bash
# fuse-inflight.sh [MiB] — a cold sequential fio read of a MiB-sized file
# (default 512) through a fresh kmsfs mount on a tmpfs, under `perf record`
# of the kernel's FUSE tracepoints (Linux 6.16+), then: how many READs were
# in flight for what share of the read, the gaps between READ completions,
# and the first send (S) and end (E) times in µs. Shows how the kernel's
# read-ahead feeds the daemon (docs/PERFORMANCE.md, "Why bulk reads stay
# below the loopback"). Extra `kmsfs mount` flags: KMSFS_MOUNT_FLAGS. Run
# from the repository root as root after `make build`.
set -euo pipefail
mib=${1:-512}
dir=$(mktemp -d)
cleanup() {
	mountpoint -q "$dir/m" && umount "$dir/m" || true
	wait 2>/dev/null || true
	mountpoint -q "$dir" && umount "$dir" || true
	rm -rf "$dir"
}
trap cleanup EXIT
mount -t tmpfs -o size=$((mib * 2 + 64))m tmpfs "$dir"
mkdir "$dir/c" "$dir/m"
head -c 32 /dev/urandom > "$dir/key"
bin/kmsfs init --key "local:$dir/key" "$dir/c" >/dev/null
# shellcheck disable=SC2086
bin/kmsfs mount -f ${KMSFS_MOUNT_FLAGS:-} "$dir/c" "$dir/m" > "$dir/log" 2>&1 &
for _ in $(seq 100); do mountpoint -q "$dir/m" && break; sleep 0.1; done
mountpoint -q "$dir/m" || { cat "$dir/log"; exit 1; }
dd if=/dev/zero of="$dir/m/f" bs=1M count="$mib" status=none
sync; echo 3 > /proc/sys/vm/drop_caches
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$dir/fuse.perf" 2>/dev/null &
rec=$!
sleep 1
fio --name=read --filename="$dir/m/f" --rw=read --bs=1M --size="${mib}M" --invalidate=1 \
	--fadvise_hint=sequential --ioengine=psync | grep -E '^ +READ:'
kill -INT $rec
wait $rec || true
perf script -i "$dir/fuse.perf" -F time,event,trace 2>/dev/null | python3 -c '
import re, sys
pat = re.compile(r"\s*([\d.]+):\s+fuse:(fuse_request_\w+):\s+connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
ev, op = [], {}
for line in sys.stdin:
    m = pat.match(line)
    if not m:
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(3)
    if kind == "fuse_request_send":
        op[req] = m.group(4)
    if op.get(req) == "FUSE_READ":
        ev.append((t, "S" if kind == "fuse_request_send" else "E"))
if not ev:
    sys.exit("no READ events traced")
t0, last, n, top, share = ev[0][0], ev[0][0], 0, 0, {}
for t, k in ev:
    share[n] = share.get(n, 0) + t - last
    last = t
    n += 1 if k == "S" else -1
    top = max(top, n)
total = sum(share.values())
print("READs in flight, share of the time:", " ".join("%d:%.2f" % (k, v / total) for k, v in sorted(share.items())))
print("most in flight:", top)
ends = [t for t, k in ev if k == "E"]
gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
q = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] * 1e6
print("READs %d; between completions (us): p10 %.0f p50 %.0f p90 %.0f" % (len(ends), q(0.1), q(0.5), q(0.9)))
print("timeline (us):", " ".join("%s%.0f" % (k, (t - t0) * 1e6) for t, k in ev[40:90]))
'

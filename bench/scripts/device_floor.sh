#!/usr/bin/env bash
# The disk alone under the engine's half-load shape, with no Keel involved: what the p99 of
# issue 2's latency row can at best be on this machine. fio writes two files at once (one per
# partition), each a stream of BS-byte O_DIRECT writes made durable by themselves (O_DSYNC, as
# the engine's flushes are) at RATE MiB/s, and prints per file the write+sync latency
# percentiles, the maximum, and how many 10 ms windows held a write slower than 5 ms.
#
#   bench/scripts/device_floor.sh DIR
#
# Environment: RATE (MiB/s per file, default 600: 1.2 GB/s in all, half of the engine's
# single-message bandwidth here), BS (default 128k: a half-load flush carries 110-150
# messages), SECONDS_RUN (default 20), ENGINE (psync or io_uring, default psync) and HOGS
# (busy loops run meanwhile, default 0: set 2 to see what a saturated CPU does to the syncs).
# Needs fio (`apt-get install fio`) and python3. DIR must be on the filesystem to measure;
# two 1 GiB files are written there and removed at the end.
set -euo pipefail
dir=${1:?usage: device_floor.sh DIR}
rate=${RATE:-600}
bs=${BS:-128k}
seconds=${SECONDS_RUN:-20}
engine=${ENGINE:-psync}
hogs=${HOGS:-0}
command -v fio >/dev/null || { echo "device_floor.sh: fio is missing (apt-get install fio)" >&2; exit 2; }
work=$(mktemp -d -p "$dir" keel-device-floor.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# Lay the files out first, and let the page cache's copy of that reach the disk, so the timed
# run overwrites written blocks (as the engine does at its retention size) with nothing else
# in flight.
fio --directory="$work" --size=1g --rw=write --bs=1m --create_only=1 --name=p0 --name=p1 >/dev/null
sync
for _ in $(seq "$hogs"); do
  (while :; do :; done) &
  pids+=($!)
done
echo "fio: 2 files x $rate MiB/s of $bs O_DSYNC writes, $engine, $seconds s, $hogs busy loops" >&2
fio --directory="$work" --ioengine="$engine" --direct=1 --sync=dsync \
  --rw=write --bs="$bs" --size=1g --rate="${rate}m" --time_based=1 --runtime="$seconds" \
  --ramp_time=2 --percentile_list=50:99:99.9 --write_lat_log="$work/lat" --log_avg_msec=10 \
  --log_max_value=1 --output-format=json --output="$work/out.json" --name=p0 --name=p1 >/dev/null
python3 - "$work" <<'EOF'
import glob, json, os, sys
work = sys.argv[1]
jobs = json.load(open(os.path.join(work, "out.json")))["jobs"]
print("| file | MiB/s | write+sync p50 | p99 | p99.9 | max | 10 ms windows with a write > 5 ms |")
print("|---|---|---|---|---|---|---|")
for i, job in enumerate(jobs):
    w = job["write"]
    pct = w["clat_ns"]["percentile"]
    us = lambda key: round(pct[key] / 1000)
    slow = 0
    for path in glob.glob(os.path.join(work, f"lat_clat.{i + 1}.log")):
        for line in open(path):
            if int(line.split(",")[1]) > 5_000_000:
                slow += 1
    print(f"| {job['jobname']} | {w['bw'] / 1024:.0f} | {us('50.000000')} µs | {us('99.000000')} µs"
          f" | {us('99.900000')} µs | {round(w['clat_ns']['max'] / 1000)} µs | {slow} |")
EOF

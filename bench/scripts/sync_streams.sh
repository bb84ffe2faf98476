#!/usr/bin/env bash
# The disk alone (fio, no Keel): durable sequential writes from one stream against two at once,
# at two write sizes. Each stream is what one partition's flushes are: BS-byte O_DIRECT writes,
# each made durable by itself (O_DSYNC, as the engine's `RWF_DSYNC` flushes are), one in flight.
# It shows what splitting the same bytes over two partitions, each flushing on its own, costs
# the disk: issue 2's single-message row keeps 2 MiB in flight over two partitions, so its
# flushes carry about 0.5 MiB each and two are in flight at a time.
#
#   bench/scripts/sync_streams.sh DIR
#
# Environment: SECONDS_RUN (per shape and round, default 4), ROUNDS (default 2; the shapes run
# in turn each round, so a drifting disk shows as spread rather than as a difference).
# The written bytes repeat 0x6b, the byte `keel-bench load` fills its values with (this disk
# writes constant data faster than random). Needs fio (`apt-get install fio`) and python3. DIR
# must be on the filesystem to measure; two 1 GiB files are written there and removed at the end.
set -euo pipefail
dir=${1:?usage: sync_streams.sh DIR}
seconds=${SECONDS_RUN:-4}
rounds=${ROUNDS:-2}
command -v fio >/dev/null || { echo "sync_streams.sh: fio is missing (apt-get install fio)" >&2; exit 2; }
work=$(mktemp -d -p "$dir" keel-sync-streams.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Lay the files out and let that reach the disk, so the timed writes overwrite written blocks
# (as the engine does at its retention size).
fio --directory="$work" --size=1g --rw=write --bs=1m --create_only=1 --name=s0 --name=s1 >/dev/null
sync
for round in $(seq "$rounds"); do
  for bs in 512k 1m; do
    for streams in 1 2; do
      jobs=(--name=s0)
      [ "$streams" = 2 ] && jobs+=(--name=s1)
      echo "round $round: $streams x $bs" >&2
      fio --directory="$work" --ioengine=io_uring --iodepth=1 --direct=1 --sync=dsync \
        --rw=write --bs="$bs" --size=1g --buffer_pattern=0x6b --time_based=1 \
        --runtime="$seconds" --output-format=json \
        --output="$work/r$round-$streams-$bs.json" "${jobs[@]}" >/dev/null
    done
  done
done
python3 - "$work" <<'EOF'
import glob, json, os, re, sys
work = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(work, "r*.json"))):
    _, streams, bs = re.match(r"r(\d+)-(\d+)-(\w+)\.json", os.path.basename(path)).groups()
    jobs = json.load(open(path))["jobs"]
    total = sum(j["write"]["bw_bytes"] for j in jobs) / 1e6
    mean_us = sum(j["write"]["clat_ns"]["mean"] for j in jobs) / len(jobs) / 1000
    rows.setdefault((bs, int(streams)), []).append((total, mean_us))
print("| streams x write size | MB/s in all, each round | mean write+sync, each round |")
print("|---|---|---|")
for (bs, streams), runs in sorted(rows.items(), key=lambda kv: (kv[0][0] != "512k", kv[0][1])):
    print(f"| {streams} x {bs} | {', '.join(f'{t:.0f}' for t, _ in runs)}"
          f" | {', '.join(f'{m:.0f} µs' for _, m in runs)} |")
EOF

#!/usr/bin/env bash
# How long keeld takes to start on a data directory holding a big log: from launch until it
# accepts connections (recovery is over), with sealed segments taken from their summaries
# (the default) and with every segment read whole (check_sealed_segments = true).
#
#   bench/scripts/startup_time.sh [FILL_SECONDS] [ROUNDS]
#
# Fills a log with FILL_SECONDS (default 10) of 1 KiB produces on 2 partitions, stops keeld,
# then starts it ROUNDS times (default 3) each way. As root, the page cache is dropped before
# each start, so the segments are read from the disk; otherwise the figures are warm-cache
# ones and the script says so. Needs target/release/{keeld,keel-bench} and a data directory on
# a disk filesystem: KEEL_STARTUP_DIR (default ./keel-startup, removed at the end).
set -euo pipefail
fill=${1:-10}
rounds=${2:-3}
bin=$(dirname "$0")/../../target/release
dir=${KEEL_STARTUP_DIR:-./keel-startup}
addr=127.0.0.1:${KEEL_STARTUP_PORT:-7374}
server=

stop() {
  [ -n "$server" ] && kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  server=
}
trap 'stop; rm -rf "$dir"' EXIT

# Starts keeld with config file $1; sets `took` to the seconds until it accepts a connection.
start() {
  local t0 t1
  t0=$(date +%s.%N)
  "$bin/keeld" --data-dir "$dir/data" --listen "$addr" --log-level warn --config "$1" \
    >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 6000); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "keeld exited during start-up" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  took=$(echo "$t1 - $t0" | bc)
}

cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

rm -rf "$dir"
mkdir -p "$dir"
printf 'check_sealed_segments = false\n' >"$dir/summaries.toml"
printf 'check_sealed_segments = true\n' >"$dir/whole.toml"
start "$dir/summaries.toml"
"$bin/keel-bench" produce --server "$addr" --topic big --partitions 2 --producers 4 \
  --window 256 --batch 0 --seconds "$fill" >/dev/null 2>&1 || { echo "fill failed" >&2; exit 1; }
stop
echo "log: $(du -sh "$dir/data/topics" | cut -f1), $(find "$dir/data/topics" -name '*.seg' | wc -l) segments"
[ -w /proc/sys/vm/drop_caches ] || echo "(not root: page cache not dropped, warm-cache figures)"
for round in $(seq "$rounds"); do
  for way in summaries whole; do
    cold
    start "$dir/$way.toml"
    echo "round $round, $way: $took s"
    stop
  done
done

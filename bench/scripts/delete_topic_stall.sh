#!/usr/bin/env bash
# What deleting a large topic does to another topic's produces: keeld is filled with a topic
# "big" (2 partitions, closed loop for FILL_SECONDS), then a topic "live" is produced to open
# loop at RATE msg/s for 6 s and "big" is deleted 2.5 s in. Prints how long the delete call took
# and live's produce→ack latency row (p50, p90, p99, p99.9, max). Several keeld builds run in
# turn, ROUNDS times, so they can be compared on a noisy machine.
#
#   bench/scripts/delete_topic_stall.sh [ROUNDS] -- KEELD...
#
# Needs target/release/keel-bench and target/release/keel, and a data directory on a disk
# filesystem: KEEL_AB_DIR (default ./keel-delete-stall, removed before each run and at the end).
# RATE (default 300000) and FILL_SECONDS (default 3) may be set in the environment.
set -euo pipefail
rounds=${1:-2}
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: delete_topic_stall.sh [ROUNDS] -- KEELD..." >&2; exit 2; }
here=$(dirname "$0")/../../target/release
gen=${KEEL_BENCH:-$here/keel-bench}
cli=${KEEL_CLI:-$here/keel}
dir=${KEEL_AB_DIR:-./keel-delete-stall}
addr=127.0.0.1:${KEEL_AB_PORT:-7373}
rate=${RATE:-300000}
fill=${FILL_SECONDS:-3}
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$dir"' EXIT

run() { # keeld binary
  local bin=$1 t0 t1 size row
  rm -rf "$dir"
  "$bin" --data-dir "$dir" --listen "$addr" --log-level warn >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break
    sleep 0.1
  done
  "$gen" produce --server "$addr" --topic big --partitions 2 --seconds "$fill" >/dev/null
  size=$(du -sh "$dir/topics/big" | cut -f1)
  "$gen" produce --server "$addr" --topic live --partitions 2 --seconds 6 --rate "$rate" \
    >"$dir.live" 2>&1 &
  local live=$!
  sleep 2.5
  t0=$(date +%s%N)
  "$cli" --server "$addr" topic delete big >/dev/null
  t1=$(date +%s%N)
  wait "$live"
  row=$(grep -E '^\| produce→ack' "$dir.live")
  rm -f "$dir.live"
  kill "$server" && wait "$server" || true
  server=
  echo "$bin: deleted $size in $(( (t1 - t0) / 1000000 )) ms; live $row"
}

for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    run "$bin"
  done
done

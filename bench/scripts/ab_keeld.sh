#!/usr/bin/env bash
# Two keeld builds under the same produce load, run alternately, so a change's effect shows
# through a noisy machine: msg/s, and keeld's CPU time (from /proc) per message.
#
#   bench/scripts/ab_keeld.sh OLD_KEELD NEW_KEELD [ROUNDS] [SECONDS] [-- keel-bench produce flags]
#
# Needs target/release/keel-bench (one generator for both sides) and a data directory on a
# disk filesystem: KEEL_AB_DIR (default ./keel-ab, removed before each run and at the end).
# To measure a log at its retention size rather than a first fill: KEEL_AB_CONFIG=FILE (a
# keeld config, e.g. with retention_bytes) and KEEL_AB_FILL_SECONDS=N (an untimed produce of
# N seconds before each timed one; enough to write past the retention, so segment files are
# reused).
set -euo pipefail
old=${1:?usage: ab_keeld.sh OLD_KEELD NEW_KEELD [ROUNDS] [SECONDS] [-- produce flags]}
new=${2:?usage: ab_keeld.sh OLD_KEELD NEW_KEELD [ROUNDS] [SECONDS] [-- produce flags]}
rounds=${3:-8}
seconds=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
gen=${KEEL_BENCH:-$(dirname "$0")/../../target/release/keel-bench}
dir=${KEEL_AB_DIR:-./keel-ab}
addr=127.0.0.1:${KEEL_AB_PORT:-7373}
config=()
[ -n "${KEEL_AB_CONFIG:-}" ] && config=(--config "$KEEL_AB_CONFIG")
fill=${KEEL_AB_FILL_SECONDS:-0}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label binary [produce flags]
  local label=$1 bin=$2 pid line t0 t1
  shift 2
  rm -rf "$dir"
  "$bin" --data-dir "$dir" --listen "$addr" --log-level warn "${config[@]}" >/dev/null 2>&1 &
  pid=$!
  server=$pid
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null || { echo "$label: $bin did not start" >&2; exit 1; }
  if [ "$fill" -gt 0 ]; then
    "$gen" produce --server "$addr" --partitions 2 --seconds "$fill" "$@" >/dev/null ||
      { echo "$label: the fill failed" >&2; exit 1; }
  fi
  t0=$(cpu_ticks "$pid")
  line=$("$gen" produce --server "$addr" --partitions 2 --seconds "$seconds" "$@" |
    grep -E '^\| [0-9]' | head -1) || { echo "$label: the produce run failed" >&2; exit 1; }
  t1=$(cpu_ticks "$pid")
  kill "$pid" && wait "$pid" || true
  server=
  # The figures row: | messages | seconds | msg/s | MB/s |
  echo "$line" | awk -F'|' -v label="$label" -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    '{ printf "%s %d msg/s, keeld %.3f µs CPU per message\n", label, $4, ticks / hz * 1e6 / $2 }'
}

alternate() {
  server=
  # The loop runs in a pipeline's subshell: its own trap stops a server left by a failure.
  trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$dir"' EXIT
  for _ in $(seq "$rounds"); do
    run old "$old" "$@"
    run new "$new" "$@"
  done
}

alternate "$@" | tee /dev/stderr | awk '
  { rate[$1] += $2; cpu[$1] += $5; n[$1]++ }
  END {
    for (k in n) printf "%s mean of %d: %.0f msg/s, %.3f µs CPU per message\n", k, n[k], rate[k] / n[k], cpu[k] / n[k]
    if (n["old"] && n["new"]) printf "new / old: %.3f msg/s, %.3f CPU per message\n", (rate["new"] / n["new"]) / (rate["old"] / n["old"]), (cpu["new"] / n["new"]) / (cpu["old"] / n["old"])
  }'

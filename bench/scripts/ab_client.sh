#!/usr/bin/env bash
# Two load generators (keel-bench builds, so two builds of the client) under the same produce
# load, run alternately against one null server and one keeld that stay up throughout: msg/s
# against each, keeld / null server, and the generator's CPU time per message.
#
#   bench/scripts/ab_client.sh OLD_KEEL_BENCH NEW_KEEL_BENCH [ROUNDS] [SECONDS]
#
# keeld is target/release/keeld (KEEL_AB_KEELD to change), on a data directory on a disk
# filesystem: KEEL_AB_DIR (default ./keel-ab, removed before and after). It keeps 1 GiB per
# partition in 256 MiB segments and is filled past that first (untimed, with OLD), so the
# runs write over a log at its retention size. On two cores the generator shares the CPU
# with the server: a cheaper client raises the null server's figure more than keeld's.
set -euo pipefail
old=${1:?usage: ab_client.sh OLD_KEEL_BENCH NEW_KEEL_BENCH [ROUNDS] [SECONDS]}
new=${2:?usage: ab_client.sh OLD_KEEL_BENCH NEW_KEEL_BENCH [ROUNDS] [SECONDS]}
rounds=${3:-4}
seconds=${4:-4}
here=$(dirname "$0")/../..
keeld=${KEEL_AB_KEELD:-$here/target/release/keeld}
dir=${KEEL_AB_DIR:-./keel-ab}
keeld_addr=127.0.0.1:${KEEL_AB_PORT:-7373}
null_addr=127.0.0.1:$(( ${KEEL_AB_PORT:-7373} + 1 ))

wait_for() { # addr pid name
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  kill -0 "$2" 2>/dev/null || { echo "$3 did not start" >&2; exit 1; }
}

rm -rf "$dir"
mkdir -p "$dir/data"
printf 'segment_bytes = 268435456\nretention_bytes = 1073741824\n' > "$dir/keeld.toml"
"$keeld" --data-dir "$dir/data" --listen "$keeld_addr" --log-level warn \
  --config "$dir/keeld.toml" >/dev/null 2>&1 &
keeld_pid=$!
"$old" null-server --listen "$null_addr" >/dev/null 2>&1 &
null_pid=$!
trap 'kill $keeld_pid $null_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
wait_for "$keeld_addr" $keeld_pid keeld
wait_for "$null_addr" $null_pid "the null server"
"$old" produce --server "$keeld_addr" --partitions 2 --seconds 10 >/dev/null 2>&1 ||
  { echo "the fill failed" >&2; exit 1; }

# One timed produce: prints "MSG_PER_S CPU_US_PER_MESSAGE".
one() { # generator addr
  /usr/bin/time -o "$dir/time" -f '%U %S' "$1" produce --server "$2" --partitions 2 \
    --seconds "$seconds" > "$dir/out" 2>/dev/null || { echo "a produce run failed" >&2; exit 1; }
  # The figures row: | messages | seconds | msg/s | MB/s |
  awk -F'|' '/^\| [0-9]/ { print $2 + 0, $4 + 0; exit }' "$dir/out" | {
    read -r messages rate
    awk -v n="$messages" -v r="$rate" '{ printf "%d %.3f\n", r, ($1 + $2) * 1e6 / n }' "$dir/time"
  }
}

for _ in $(seq "$rounds"); do
  for side in old new; do
    read -r null_rate null_cpu < <(one "${!side}" "$null_addr")
    read -r keeld_rate keeld_cpu < <(one "${!side}" "$keeld_addr")
    echo "$side $null_rate $null_cpu $keeld_rate $keeld_cpu"
  done
done | tee /dev/stderr | awk '
  { n[$1]++; nr[$1] += $2; nc[$1] += $3; kr[$1] += $4; kc[$1] += $5; ratio[$1] += $4 / $2 }
  END {
    for (s in n) printf "%s mean of %d: null server %.0f msg/s (generator %.3f µs CPU per message), keeld %.0f msg/s (%.3f µs), keeld / null %.3f\n", s, n[s], nr[s] / n[s], nc[s] / n[s], kr[s] / n[s], kc[s] / n[s], ratio[s] / n[s]
    if (n["old"] && n["new"]) printf "new / old: null server %.3f msg/s, %.3f CPU per message; keeld %.3f msg/s, %.3f CPU per message\n", nr["new"] / nr["old"], nc["new"] / nc["old"], kr["new"] / kr["old"], kc["new"] / kc["old"]
  }'

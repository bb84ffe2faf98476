#!/usr/bin/env bash
# Where a flush's time goes, and how much the disk idles, while keeld takes a produce load:
# records io_uring and block-layer tracepoints for a second, then prints
#   - each flush write's time from submission to completion, and the gap from a completion to
#     the same shard's next flush write (time the disk gets nothing from that partition);
#   - the share of time the device had at least one request in flight;
#   - one flush taken apart: data write on the device, write done -> cache flush issued (a
#     kernel worker), the cache flush, and cache flush done -> completion seen by the shard.
#
#   bench/scripts/flush_timeline.sh KEELD_PID [SECONDS]
#
# Run it while a load is going, e.g. `keel-bench produce --server ADDR --partitions 2
# --seconds 10` against that keeld. Needs perf (with tracepoint access: root) and python3.
# The device is the one holding keeld's data directory; its block events are matched by
# sector, so other I/O on the device during the recording blurs the figures.
set -euo pipefail
pid=${1:?usage: flush_timeline.sh KEELD_PID [SECONDS]}
seconds=${2:-1}
kill -0 "$pid" 2>/dev/null || { echo "no process $pid" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
perf record -a -q -o "$out/perf.data" \
  -e io_uring:io_uring_submit_req,io_uring:io_uring_complete \
  -e block:block_rq_issue,block:block_rq_complete -- sleep "$seconds" >/dev/null 2>&1
perf script -i "$out/perf.data" -F comm,tid,time,event,trace 2>/dev/null >"$out/events.txt"
python3 - "$out/events.txt" <<'EOF'
import bisect, re, sys

path = sys.argv[1]
line_re = re.compile(r"^\s*(\S+)\s+(\d+)\s+([\d.]+):\s+(\S+):\s+(.*)$")
events = []
for line in open(path):
    m = line_re.match(line)
    if m:
        events.append((m.group(1), float(m.group(3)), m.group(4), m.group(5)))
if not events:
    sys.exit("no events recorded: is a load running, and may perf read tracepoints?")

submitted, last_done = {}, {}
io, gap = [], []
data_issue, data_rows, flush_issue, flush_done, shard_done = {}, [], [], [], []
busy, in_flight, t_prev = 0.0, 0, None
for comm, t, ev, rest in events:
    shard = comm.startswith("keel-shard")
    if ev.endswith("io_uring_submit_req") and shard and "opcode WRITE" in rest:
        ring = re.search(r"ring (\S+),", rest).group(1)
        submitted[ring] = t
        if ring in last_done:
            gap.append(t - last_done.pop(ring))
    elif ev.endswith("io_uring_complete") and shard:
        ring = re.search(r"ring (\S+),", rest).group(1)
        result = int(re.search(r"result (-?\d+)", rest).group(1))
        if ring in submitted and result > 4096:
            io.append(t - submitted.pop(ring))
            last_done[ring] = t
            shard_done.append(t)
    elif ev.startswith("block:block_rq_"):
        if t_prev is not None and in_flight > 0:
            busy += t - t_prev
        t_prev = t
        issue = ev.endswith("issue")
        in_flight = max(0, in_flight + (1 if issue else -1))
        m = re.match(r"\d+,\d+ (\S+) (?:\d+ )?\(\) (\d+) \+ (\d+)", rest)
        if not m:
            continue
        rwbs, sector, sectors = m.group(1), int(m.group(2)), int(m.group(3))
        if rwbs.startswith("W") and sectors > 0:
            if issue:
                data_issue[sector] = t
            elif sector in data_issue:
                data_rows.append((data_issue.pop(sector), t))
        elif rwbs.startswith("FF"):
            (flush_issue if issue else flush_done).append(t)

def show(name, xs):
    if not xs:
        print(f"{name}: none seen")
        return
    xs = sorted(xs)
    n = len(xs)
    print(f"{name}: {n}, mean {sum(xs) / n * 1e6:.0f} µs, p50 {xs[n // 2] * 1e6:.0f}, p90 {xs[int(n * 0.9)] * 1e6:.0f}")

span = events[-1][1] - events[0][1]
show("flush write, submitted -> completed", io)
show("gap, completed -> that shard's next flush write", gap)
print(f"device busy (a request in flight): {busy / span:.2f} of the time")
parts = [[], [], [], []]
for issued, done in data_rows:
    i = bisect.bisect(flush_issue, done)
    if i == len(flush_issue):
        continue
    j = bisect.bisect(flush_done, flush_issue[i])
    if j == len(flush_done):
        continue
    k = bisect.bisect(shard_done, flush_done[j])
    if k == len(shard_done):
        continue
    for p, x in zip(parts, (done - issued, flush_issue[i] - done, flush_done[j] - flush_issue[i], shard_done[k] - flush_done[j])):
        p.append(x)
for name, p in zip(("data write on the device", "write done -> cache flush issued", "cache flush on the device", "cache flush done -> shard sees it"), parts):
    show("  " + name, p)
EOF

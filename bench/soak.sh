#!/usr/bin/env bash
# Soak: loadgen on its own local testnet (`lethe testnet up`: a directory, 3 credential
# issuers, 6 mixnodes, 2 gateways) for 30 minutes at 500 packets/s, reported per 5-minute
# window (delivered, lost, p50/p99, every node's RSS), then judged. Exits 0 on a pass, 1 on a
# failed verdict, 2 when loadgen could not run. The run fails when
#   - more than 0.1 % of the offered packets go undelivered (lost, never sent, failed writes),
#   - the end-to-end p99 passes 100 ms (+ 13.8 x MU with a mix delay: room for three
#     exponential hops, as `loadgen sweep`'s default bound),
#   - a node process exits (the run stops there) or logs a panic, or it is interrupted,
#   - a node's or loadgen's own RSS grows more than 20 % from the end of the first window
#     (the warm-up) to the end of the run, less the replay filters the node states it holds
#     (`lethe_memory_replay_filters_bytes`: a key rotation's overlap holds a second one, so a
#     run that ends inside an overlap is no leak); the output lists every process's growth.
#
# Usage: bench/soak.sh [more loadgen flags]
# Settings (environment): DURATION (30m) WINDOW (5m) RATE (500) MU (0, ms per hop)
#   MAX_LOSS_PCT (0.1) MAX_P99_MS (100 + 13.8 x MU) MAX_RSS_GROWTH_PCT (20)
#   OUT (soak-<date>: summary.json, windows.csv, timeseries.csv, plots, report.txt, logs/: every
#   node's log)
# A quick check of the whole path: DURATION=2m WINDOW=30s bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30m}
WINDOW=${WINDOW:-5m}
RATE=${RATE:-500}
MU=${MU:-0}
MAX_LOSS_PCT=${MAX_LOSS_PCT:-0.1}
MAX_P99_MS=${MAX_P99_MS:-$(awk -v mu="$MU" 'BEGIN { print 100 + 13.8 * mu }')}
MAX_RSS_GROWTH_PCT=${MAX_RSS_GROWTH_PCT:-20}
OUT=${OUT:-soak-$(date +%Y%m%d-%H%M%S)}

cargo build --release -p lethe-nodes --bin lethe -p lethe-loadgen --bin loadgen
mkdir -p "$OUT"
echo "soak: ${DURATION} at ${RATE}/s, mu ${MU} ms, windows of ${WINDOW}; fails above" \
    "${MAX_LOSS_PCT}% undelivered, p99 ${MAX_P99_MS} ms, RSS growth ${MAX_RSS_GROWTH_PCT}%;" \
    "files in ${OUT}" >&2

set +e
target/release/loadgen \
    --duration "$DURATION" --window "$WINDOW" --rate "$RATE" --mu "$MU" \
    --max-loss "$MAX_LOSS_PCT" --max-p99-ms "$MAX_P99_MS" \
    --max-rss-growth-pct "$MAX_RSS_GROWTH_PCT" \
    --out "$OUT" "$@" | tee "$OUT/report.txt"
status=${PIPESTATUS[0]}
set -e

# Which process grew: every watched process's RSS from the end of the first window to the
# end, largest growth first (loadgen's own included; the verdict judges them all), and what
# is left of it once the replay filters a node states it added or dropped are taken out.
if [ -f "$OUT/summary.json" ]; then
    python3 - "$OUT/summary.json" >&2 <<'PY' || true
import json, sys
result = json.load(open(sys.argv[1])).get("result", {})
rows = [p for p in result.get("processes", []) if p.get("rss_growth_unaccounted_pct") is not None]
rows.sort(key=lambda p: -p["rss_growth_unaccounted_pct"])
for p in rows:
    line = "soak: RSS %-10s %8.1f -> %8.1f MiB after window 1 (%+.1f%%)" % (
        p["name"], p["rss_kib_first_window_end"] / 1024, p["rss_kib_end"] / 1024,
        p["rss_growth_after_warmup_pct"])
    if p["rss_growth_unaccounted_kib"] != p["rss_growth_after_warmup_kib"]:
        line += "; replay filters %.1f -> %.1f MiB, %+.1f%% beyond them" % (
            p["replay_filters_kib_first_window_end"] / 1024, p["replay_filters_kib_end"] / 1024,
            p["rss_growth_unaccounted_pct"])
    if p.get("memory_kib_max_stated") is not None:
        line += "; states at most %.1f MiB" % (p["memory_kib_max_stated"] / 1024)
    print(line)
PY
fi

case $status in
    0) echo "soak: PASS (report in $OUT)" >&2 ;;
    1) echo "soak: FAIL (the FAIL lines above; report in $OUT)" >&2 ;;
    *) echo "soak: loadgen stopped with an error (exit $status)" >&2 ;;
esac
exit "$status"

#!/usr/bin/env bash
# Churn (issue 19 item 6): how fast a dead mixnode leaves the clients' routes, and how fast a
# new one gets traffic. A local testnet (AUTHORITIES voting authorities, 4 by default, or 1: a
# lone directory; 2 mixnodes per layer, short epochs and heartbeat timeout) carries loadgen's
# traffic (gateway clients, 1-s windows, the consensus re-read each epoch and at least every
# REFRESH_S); at KILL_AT_S into the run one mixnode is SIGKILLed, at JOIN_AT_S a new mixnode
# is started. Prints, each from the kill or the start:
#   routed_around_s  loadgen adopted a document without the dead node (no packet is built
#                    over it from then on)
#   loss_zero_s      start of the first 1-s window after which no window lost a packet
#   joined_routes_s  loadgen adopted a document listing the new node
#   first_traffic_s  the new node's lethe_packets_received_total first went above 0
# The floor is the heartbeat timeout (a silent node is dropped after it) plus the publication:
# a lone directory publishes within 1 s; voting authorities put a change in the next epoch's
# vote, certified in its middle (up to 1.5 epochs); then the client's fetch (0.4 epoch after
# the document is due, or REFRESH_S).
#
# Usage: bench/churn.sh   (env: AUTHORITIES=4 HEARTBEAT_TIMEOUT_S=3 EPOCH_S=2 REFRESH_S=1
#                          RATE=200 DURATION_S=45 KILL_AT_S=10 JOIN_AT_S=25 VICTIM=mix3)
# Exits 0 when every figure was measured, 1 otherwise. Runs ~1.5 min; builds the release
# binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."

AUTHORITIES=${AUTHORITIES:-4}
HEARTBEAT_TIMEOUT_S=${HEARTBEAT_TIMEOUT_S:-3}
EPOCH_S=${EPOCH_S:-2}
REFRESH_S=${REFRESH_S:-1}
RATE=${RATE:-200}
DURATION_S=${DURATION_S:-45}
KILL_AT_S=${KILL_AT_S:-10}
JOIN_AT_S=${JOIN_AT_S:-25}
VICTIM=${VICTIM:-mix3}
# Set-up time loadgen gets before its clock starts (sessions, prefill).
LEAD_S=10

cargo build --release -q -p lethe-nodes --bin lethe -p lethe-loadgen --bin loadgen
TARGET=${CARGO_TARGET_DIR:-target}
LETHE=$(realpath "$TARGET/release/lethe")
LOADGEN=$(realpath "$TARGET/release/loadgen")
WORK=$(mktemp -d -t lethe-churn.XXXXXX)
NEWMIX_PID=
LOADGEN_PID=
cleanup() {
    [ -n "$LOADGEN_PID" ] && kill "$LOADGEN_PID" 2>/dev/null || true
    [ -n "$NEWMIX_PID" ] && kill "$NEWMIX_PID" 2>/dev/null || true
    "$LETHE" testnet down --dir "$WORK/net" --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "churn: CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')," \
    "$(nproc) cores; $AUTHORITIES authorities, heartbeat timeout ${HEARTBEAT_TIMEOUT_S} s," \
    "epoch ${EPOCH_S} s, client refresh ${REFRESH_S} s, ${RATE} packets/s"

"$LETHE" testnet up --dir "$WORK/net" --authorities "$AUTHORITIES" --epoch-s "$EPOCH_S" \
    --heartbeat-timeout-s "$HEARTBEAT_TIMEOUT_S" --credentials false --provider false \
    >"$WORK/up.out" 2>"$WORK/up.err"
eval "$("$LETHE" testnet env --dir "$WORK/net")"
read -r VICTIM_PID VICTIM_ADDR < <(python3 - "$WORK/net/testnet.json" "$VICTIM" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
node = next(n for n in state["nodes"] if n["name"] == sys.argv[2])
print(node["pid"], node["info"]["listen"])
EOF
)

now() { date +%s.%N; }
START=$(( $(date +%s) + LEAD_S ))
"$LOADGEN" --target "$TESTNET_DIRECTORY" --directory-key "$TESTNET_DIRECTORY_KEY" \
    --rate "$RATE" --duration "${DURATION_S}s" --window 1 --topology-refresh-s "$REFRESH_S" \
    --start-at "$START" --json --quiet >"$WORK/report.json" 2>"$WORK/loadgen.err" &
LOADGEN_PID=$!

sleep_until() { # unix seconds (fractional)
    local left
    left=$(python3 -c "import time; print(max(0.0, $1 - time.time()))")
    sleep "$left"
}

sleep_until $(( START + KILL_AT_S ))
kill -9 "$VICTIM_PID"
KILLED=$(now)

sleep_until $(( START + JOIN_AT_S ))
"$LETHE" mixnode init --dir "$WORK/newmix" --profile small >/dev/null 2>&1
"$LETHE" mixnode run --dir "$WORK/newmix" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --directory "$TESTNET_DIRECTORY" --heartbeat-s 1 >"$WORK/newmix.out" 2>"$WORK/newmix.err" &
NEWMIX_PID=$!
JOINED=$(now)
METRICS=
for _ in $(seq 100); do
    METRICS=$(sed -n 's/^metrics=//p' "$WORK/newmix.out")
    [ -n "$METRICS" ] && break
    sleep 0.1
done
NEW_ADDR=$(sed -n 's/^listen=//p' "$WORK/newmix.out")
FIRST_TRAFFIC=
for _ in $(seq 600); do  # 60 s at most
    received=$(curl -s "http://$METRICS/metrics" \
        | awk '/^lethe_packets_received_total/ {s += $2} END {print s + 0}')
    if [ "${received:-0}" -gt 0 ]; then
        FIRST_TRAFFIC=$(now)
        break
    fi
    sleep 0.1
done

wait "$LOADGEN_PID" || true
LOADGEN_PID=

python3 - "$WORK/report.json" "$START" "$KILLED" "$JOINED" "${FIRST_TRAFFIC:-}" \
    "$VICTIM_ADDR" "$NEW_ADDR" <<'EOF'
import json, sys
report_path, start, killed, joined, first, victim, new = sys.argv[1:8]
start, killed, joined = float(start), float(killed), float(joined)
kill_s, join_s = killed - start, joined - start
report = json.load(open(report_path))
run = report["result"]
changes = (run.get("topology") or {}).get("changes", [])
def change_after(t, field, addr):
    for c in changes:
        if c["at_s"] >= t and any(x.startswith(addr) for x in c[field]):
            return c["at_s"] - t
    return None
routed_around = change_after(kill_s, "removed", victim)
joined_routes = change_after(join_s, "added", new)
windows = run.get("windows", [])
lossy = [w for w in windows if w["start_s"] >= kill_s - 1 and w["lost"] > 0]
loss_zero = (max(w["end_s"] for w in lossy) - kill_s) if lossy else 0.0
lost_total = sum(w["lost"] for w in lossy)
first_traffic = (float(first) - joined) if first else None
def show(v):
    return "not measured" if v is None else f"{v:.1f}"
print(f"churn: routed_around_s={show(routed_around)} loss_zero_s={show(loss_zero)} "
      f"(packets lost after the kill: {lost_total}) joined_routes_s={show(joined_routes)} "
      f"first_traffic_s={show(first_traffic)}")
sys.exit(0 if None not in (routed_around, joined_routes, first_traffic) else 1)
EOF

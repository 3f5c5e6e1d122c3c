#!/usr/bin/env bash
# SOCKS5 figures (issue 21, item 5), anonymous replies against `--reveal-address` in the same run:
# - SURB overhead: bytes of reply SURBs the proxy's client sent per byte of page received (and
#   the client's forward packets per KB received, acknowledgements included);
# - time to first byte of a SOCKS fetch (curl's time_starttransfer: SOCKS CONNECT through the
#   mixnet, Connected back, the GET out, the first byte of the answer back), median and p90.
# One `lethe testnet` (its own directory under /tmp) with its provider, two proxies (one per
# client: anonymous, and --reveal-address), a local web server; fetches alternate between the
# two proxies (which goes first alternates too). The big page first (N_BIG fetches per mode),
# then the small one (N_SMALL per mode), each size with fresh proxies so their counters are per
# size. Needs curl and python3; build first: cargo build --release -p lethe-nodes.
#
# Usage: bench/socks_figures.sh   (N_BIG=5 N_SMALL=20 BIG_BYTES=1000000 SMALL_BYTES=10000)
set -euo pipefail
cd "$(dirname "$0")/.."

LETHE=${LETHE:-target/release/lethe}
N_BIG=${N_BIG:-5}
N_SMALL=${N_SMALL:-20}
BIG_BYTES=${BIG_BYTES:-1000000}
SMALL_BYTES=${SMALL_BYTES:-10000}
[ -x "$LETHE" ] || { echo "socks_figures: build first (cargo build --release -p lethe-nodes)" >&2; exit 2; }

work=$(mktemp -d /tmp/lethe-socks-figures.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    "$LETHE" testnet down --dir "$work/testnet" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "socks_figures: CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')," \
    "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$LETHE" testnet up --dir "$work/testnet" >"$work/testnet-up.log"
eval "$("$LETHE" testnet env --dir "$work/testnet")"
for who in anon reveal; do
    "$LETHE" client init --dir "$work/$who" --directory "$TESTNET_DIRECTORY" \
        --directory-key "$TESTNET_DIRECTORY_KEY" --issuers "$TESTNET_ISSUERS" \
        --threshold "$TESTNET_THRESHOLD" --verification-key "$TESTNET_VERIFICATION_KEY" >/dev/null
done

mkdir -p "$work/www"
head -c "$BIG_BYTES" /dev/urandom >"$work/www/big.bin"
head -c "$SMALL_BYTES" /dev/urandom >"$work/www/small.bin"
web_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$web_port" >/dev/null 2>&1 &
pids+=($!)

# Starts the proxy of client $1 (with extra flags $2...); sets proxy_pid and proxy_addr.
start_proxy() {
    local who=$1; shift
    "$LETHE" client socks5 --dir "$work/$who" --provider "$TESTNET_PROVIDER" \
        --listen 127.0.0.1:0 "$@" >"$work/$who.out" 2>"$work/$who.err" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    for _ in $(seq 1 600); do
        proxy_addr=$(sed -n 's/^socks5=//p' "$work/$who.out")
        [ -n "$proxy_addr" ] && return 0
        kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/$who.err" >&2; exit 1; }
        sleep 0.1
    done
    echo "socks_figures: the $who proxy did not start" >&2
    exit 1
}

# Stops proxy $1 of client $2 (SIGTERM; it prints its counters) and prints its stats JSON.
stop_proxy() {
    kill -TERM "$1"
    wait "$1" 2>/dev/null || true
    sed -n 's/^stats=//p' "$work/$2.out"
}

# One fetch of $2 through proxy $1: prints "ttfb_s bytes"; fails on a short or wrong page.
fetch() {
    local out="$work/fetched"
    rm -f "$out"
    curl -s --max-time 600 --socks5-hostname "$1" "http://127.0.0.1:$web_port/$2" -o "$out" \
        -w '%{time_starttransfer} %{size_download}\n'
    cmp -s "$out" "$work/www/$2" || { echo "socks_figures: $2 arrived wrong" >&2; exit 1; }
}

results="$work/results"
: >"$results"
for size in big small; do
    n=$N_BIG
    [ "$size" = small ] && n=$N_SMALL
    start_proxy anon
    anon_pid=$proxy_pid anon_addr=$proxy_addr
    start_proxy reveal --reveal-address
    reveal_pid=$proxy_pid reveal_addr=$proxy_addr
    for i in $(seq 1 "$n"); do
        if [ $((i % 2)) -eq 1 ]; then order="anon reveal"; else order="reveal anon"; fi
        for mode in $order; do
            addr=$anon_addr
            [ "$mode" = reveal ] && addr=$reveal_addr
            echo "fetch $size $mode $(fetch "$addr" "$size.bin")" >>"$results"
        done
    done
    echo "stats $size anon $(stop_proxy "$anon_pid" anon)" >>"$results"
    echo "stats $size reveal $(stop_proxy "$reveal_pid" reveal)" >>"$results"
done

python3 - "$results" <<'EOF'
import json, statistics, sys
fetches, stats = {}, {}
for line in open(sys.argv[1]):
    kind, size, mode, rest = line.split(" ", 3)
    if kind == "fetch":
        ttfb, nbytes = rest.split()
        fetches.setdefault((size, mode), []).append((float(ttfb), int(nbytes)))
    else:
        stats[(size, mode)] = json.loads(rest)

def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]

print("| page | replies | fetches | TTFB median s | TTFB p90 s | SURBs sent | SURB bytes / page byte | client packets / KB received | acks sent | duplicates |")
print("|---|---|---|---|---|---|---|---|---|---|")
for size in ("big", "small"):
    for mode in ("anon", "reveal"):
        rows = fetches.get((size, mode), [])
        if not rows:
            continue
        ttfbs = [t for t, _ in rows]
        received = sum(b for _, b in rows)
        s = stats.get((size, mode), {})
        client, proxy = s.get("client", {}), s.get("proxy", {})
        surb_bytes = client.get("surb_bytes_attached", 0)
        packets = client.get("real_sent", 0)
        name = "through SURBs" if mode == "anon" else "--reveal-address"
        print(f"| {rows[0][1]:,} B | {name} | {len(rows)} | {statistics.median(ttfbs):.2f} | "
              f"{p90(ttfbs):.2f} | {client.get('surbs_attached', 0):,} | "
              f"{surb_bytes / received:.3f} | {packets / (received / 1000):.3f} | "
              f"{proxy.get('acks_sent', 0)} | {proxy.get('reply_duplicates', 0)} |")
EOF

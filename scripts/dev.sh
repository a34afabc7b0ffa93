#!/usr/bin/env bash
# Starts the platform locally: demo model servers, Lightbulb and the router on the example rule set,
# then prints requests to try. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# protoc: etcd-client's build script (Lightbulb's etcd store).
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if ((${#need_apt[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
cargo build --release -p router -p lightbulb -p integration-tests --bin router --bin lightbulb --bin demo-model

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

rules=models-config/examples/minimal.json
for pair in 9001:ranker-v1 9002:ranker-v1 9003:ranker-v2; do
  target/release/demo-model --listen "127.0.0.1:${pair%%:*}" --name "${pair#*:}" &
  pids+=($!)
done
target/release/lightbulb --config "$rules" --grpc 127.0.0.1:50051 --http 127.0.0.1:8081 &
pids+=($!)
target/release/router --config "$rules" --listen 127.0.0.1:8080 --admin 127.0.0.1:9901 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9901/readyz >/dev/null 2>&1 &&
    curl -fsS http://127.0.0.1:8081/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

The platform is up (rule set: $rules; edit it and both reload it).

  # which model serves member-42? (answers with routingKey + objectiveConfig)
  curl -s -d '{"objective":"ContinueWatchingRanking","subjectId":"member-42","attributes":{"country":"CA"}}' http://127.0.0.1:8081/v1/resolve
  # then send the inference request with that routing key
  curl -s -H 'x-routing-key: ranker-v1' -d '{"inputs":[1,2,3]}' http://127.0.0.1:8080/v2/models/ranker/infer
  curl -s -H 'x-routing-key: ranker-v2' --http2-prior-knowledge -d '{}' http://127.0.0.1:8080/v2/models/ranker/infer
  curl -s -H 'x-routing-key: nope' http://127.0.0.1:8080/
  curl -s http://127.0.0.1:9901/clusters
  curl -s http://127.0.0.1:9901/metrics | grep router_requests_total

Ctrl-C to stop.
MSG
wait

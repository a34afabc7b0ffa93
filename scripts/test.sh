#!/usr/bin/env bash
# Runs every check and test of the workspace, installing what they need when it is missing.
# This is the command CI runs (.ci/run) and the one the README gives.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# protoc: etcd-client's build script; etcd: the etcd store's integration tests.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
# openssl: the identity tests generate their signing keys at run time (none is committed).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build (binaries the integration tests start)"
cargo build --workspace --bins --locked
echo "== doc tests"
cargo test --workspace --doc --locked
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo nextest run --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One plain closing line: "N passed, N failed" (from nextest's summary).
summary=$(grep -E '^ +Summary ' "$log" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"

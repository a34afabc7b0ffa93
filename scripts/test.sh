#!/usr/bin/env bash
# Runs every check and test of the workspace, installing what they need when it is missing.
# This is the command CI runs (.ci/run) and the one the README gives.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
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
echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
echo "== doc tests"
cargo test --workspace --doc --locked

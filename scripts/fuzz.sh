#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (libFuzzer, on the stable toolchain) and runs each for a
# bounded time, installing what they need when it is missing. See fuzz/README.md.
#
#   scripts/fuzz.sh [--seconds N] [--replay] [TARGET...]
#
# --seconds N  how long each target runs (default 30)
# --replay     only run the seed corpus and fuzz/regressions through each target, once
# TARGET       rule_set, router_head, config_api_body, resolve_request (default: all)
#
# First every checked-in input (fuzz/corpus/TARGET, fuzz/regressions/TARGET) is run once,
# then the fuzzer starts from them. What it adds goes to fuzz/work/TARGET (untracked); a
# crash is written to fuzz/artifacts/TARGET/ and its path printed. Exits non-zero on any
# crash, timeout or out-of-memory, after the other targets have run.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(rule_set router_head config_api_body resolve_request)
seconds=30
replay=0
targets=()
while (($#)); do
  case "$1" in
  --seconds)
    seconds=${2:?--seconds needs a number}
    shift 2
    ;;
  --seconds=*)
    seconds=${1#--seconds=}
    shift
    ;;
  --replay)
    replay=1
    shift
    ;;
  -h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  -*)
    echo "unknown option $1" >&2
    exit 2
    ;;
  *)
    if [[ " ${all_targets[*]} " != *" $1 "* ]]; then
      echo "unknown target $1 (targets: ${all_targets[*]})" >&2
      exit 2
    fi
    targets+=("$1")
    shift
    ;;
  esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
[[ "$seconds" =~ ^[0-9]+$ ]] || {
  echo "--seconds takes a whole number" >&2
  exit 2
}

# libfuzzer-sys compiles libFuzzer (C++) with the system's C++ compiler; etcd-client's build
# script (a dependency of lightbulb) needs protoc.
need_apt=()
command -v c++ >/dev/null 2>&1 || need_apt+=(build-essential)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# The fuzzed dependencies are the versions the services are built with: the workspace's lock
# is the fuzz crate's starting point (cargo adds libfuzzer-sys and drops what is unused).
cp Cargo.lock fuzz/Cargo.lock

host=$(rustc -vV | sed -n 's/^host: //p')
# Coverage instrumentation (SanitizerCoverage, as cargo-fuzz sets it up) with stable rustc
# flags only. `--target` keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing"
export CARGO_TARGET_DIR=fuzz/target
echo "== build fuzz targets"
build_args=(--manifest-path fuzz/Cargo.toml --release --target "$host")
for target in "${targets[@]}"; do build_args+=(--bin "$target"); done
cargo build "${build_args[@]}"
bin_dir="fuzz/target/$host/release"

failed=()
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  regressions=fuzz/regressions/$target
  work=fuzz/work/$target
  artifacts=fuzz/artifacts/$target
  mkdir -p "$work" "$artifacts"
  log=$(mktemp)
  # Every checked-in input, once: a regression fails here before any fuzzing.
  inputs=()
  for dir in "$corpus" "$regressions"; do
    [[ -d "$dir" ]] || continue
    while IFS= read -r -d '' file; do inputs+=("$file"); done \
      < <(find "$dir" -type f ! -name '.*' ! -name '*.md' -print0 | sort -z)
  done
  status=0
  if ((${#inputs[@]})); then
    "$bin_dir/$target" -rss_limit_mb=2048 -timeout=10 "${inputs[@]}" >"$log" 2>&1 || status=$?
  fi
  if ((status != 0)); then
    cat "$log" >&2
    input=$(sed -nE 's/^Running: (.*)$/\1/p' "$log" | tail -n 1)
    echo "fuzz $target: a checked-in input fails (exit $status): ${input:-?}" >&2
    failed+=("$target")
    rm -f "$log"
    continue
  fi
  if ((replay)); then
    echo "fuzz $target: ${#inputs[@]} checked-in inputs pass"
    rm -f "$log"
    continue
  fi
  echo "== fuzz $target for ${seconds}s"
  dict=()
  [[ -f "fuzz/dict/$target.dict" ]] && dict=("-dict=fuzz/dict/$target.dict")
  seeds=("$corpus")
  [[ -d "$regressions" ]] && seeds+=("$regressions")
  # New inputs go to the untracked work dir (listed first); the seeds are read only.
  "$bin_dir/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
    "$work" "${seeds[@]}" \
    >"$log" 2>&1 || status=$?
  if ((status != 0)); then
    grep -vE '^#[0-9]+' "$log" | tail -n 60 >&2
    crash=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
    echo "fuzz $target: FAILED (exit $status); input: ${crash:-none written}" >&2
    echo "  reproduce: $bin_dir/$target ${crash:-<input>}" >&2
    failed+=("$target")
  else
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    speed=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    echo "fuzz $target: ${execs:-0} executions in ${seconds}s (${speed:-0}/s), corpus ${corp:-?} inputs, coverage ${cov:-?} edges, 0 crashes"
  fi
  rm -f "$log"
done

if ((${#failed[@]})); then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi

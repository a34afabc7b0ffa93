#!/usr/bin/env bash
# Served gRPC resolves on one core: Lightbulb (release build, --workers 1) pinned to core 0,
# the load generator on core 1. Prints the closed-loop rate (h2load) and the latency at a
# fixed open-loop rate (oha, coordinated omission corrected).
#
#   benches/harness/grpc_resolve.sh [RATE] [SECONDS]      (defaults 20000 and 10)
#
# Needs h2load (Debian nghttp2-client) and oha (cargo install oha): benches/harness/install.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RATE="${1:-20000}"
SECS="${2:-10}"
BIN="${LIGHTBULB_BIN:-$ROOT/target/release/lightbulb}"
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --release -p lightbulb)
WORK="$(mktemp -d)"
cleanup() { [[ -n "${LB:-}" ]] && kill "$LB" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

RULES="$ROOT/models-config/examples/minimal.json"
# One gRPC frame of ResolveRequest{objective, subject_id, attributes{country: CA}}, encoded by
# hand (protobuf wire format) so the harness needs no protobuf tooling.
python3 - "$WORK/resolve.bin" <<'PY'
import struct, sys
def ld(field, payload):
    out = bytes([(field << 3) | 2]); n = len(payload)
    while n >= 0x80: out += bytes([(n & 0x7f) | 0x80]); n >>= 7
    return out + bytes([n]) + payload
entry = ld(1, b"country") + ld(2, b"CA")
msg = ld(1, b"ContinueWatchingRanking") + ld(3, b"member-42") + ld(4, entry)
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY

taskset -c 0 "$BIN" --config "$RULES" --grpc 127.0.0.1:0 --http 127.0.0.1:0 --workers 1 \
    > "$WORK/out" 2> "$WORK/err" &
LB=$!
for _ in $(seq 1 200); do grep -q "listening" "$WORK/out" 2>/dev/null && break; sleep 0.05; done
GRPC=$(sed -n 's/.*grpc=\([0-9.:]*\).*/\1/p' "$WORK/out")
[[ -n "$GRPC" ]] || { cat "$WORK/err"; echo "lightbulb did not start" >&2; exit 1; }
URL="http://$GRPC/lightbulb.v1.Resolver/Resolve"
H=(-H 'content-type: application/grpc' -H 'te: trailers')

taskset -c 1 h2load -n 20000 -c 16 -m 16 "${H[@]}" -d "$WORK/resolve.bin" "$URL" > /dev/null
t0=$(awk '{print $14+$15}' "/proc/$LB/stat")
echo "== closed loop (h2load -c16 -m16, ${SECS}s)"
taskset -c 1 h2load -D "$SECS" -c 16 -m 16 "${H[@]}" -d "$WORK/resolve.bin" "$URL" \
    | grep -E "^finished in|^requests:|^status codes:|time for request:"
t1=$(awk '{print $14+$15}' "/proc/$LB/stat")
echo "lightbulb CPU seconds: $(( (t1 - t0) / 100 )).$(( (t1 - t0) % 100 ))"
echo "== open loop at $RATE/s (oha, latency corrected, ${SECS}s)"
taskset -c 1 oha --no-tui --http2 -c 16 -p 16 -q "$RATE" --latency-correction -z "${SECS}s" \
    -m POST "${H[@]}" -D "$WORK/resolve.bin" "$URL" \
    | grep -E "Requests/sec|Success rate|50.00%|90.00%|99.00%|99.90%|\[200\]" || true

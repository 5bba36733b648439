#!/usr/bin/env bash
# Foundation figures for `fraud` at batch 1 over REST, side by side in one run:
#   baseline  GET /v2/health/live (an empty HTTP exchange: the ceiling of this HTTP stack here)
#   json      POST /v2/models/fraud/infer, JSON tensors
#   binary    the same request with the binary tensor extension (what tritonclient sends)
# plus start-to-ready time, idle RSS with the demo repository, and the release binary size.
#   bash bench/foundation.sh [DURATION_S=10] [CONNECTIONS=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
duration=${1:-10}
conns=${2:-16}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
bash scripts/setup-venv.sh
use_release_kiln
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(port)
t0=$(date +%s%N)
target/release/kiln serve examples/models --http-port "$port" --log-level warn &
pid=$!
until curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null; do sleep 0.005; done
t1=$(date +%s%N)
sleep 1
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)

.venv/bin/python - "$work" <<'PY'
import json, struct, sys
work = sys.argv[1]
row = json.load(open("examples/fixtures/fraud.json"))["inputs"][0]
open(f"{work}/json.body", "w").write(json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}))
header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 120}}],
                     "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                 {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
open(f"{work}/binary.body", "wb").write(header + struct.pack("<30f", *row))
open(f"{work}/binary.len", "w").write(str(len(header)))
PY

run() { # name, wrk args...
  local name=$1; shift
  local out
  out=$(wrk -t1 -c"$conns" -d"${duration}s" --latency "$@")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  printf '%-9s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
  echo "$rps" > "$work/$name.rps"
}
echo "kiln $(target/release/kiln --version | cut -d' ' -f2), wrk -t1 -c$conns -d${duration}s, $(nproc) cores (wrk shares them)"
run baseline "http://127.0.0.1:$port/v2/health/live"
KILN_BODY=$work/json.body run json -s bench/wrk_post.lua "http://127.0.0.1:$port/v2/models/fraud/infer"
KILN_BODY=$work/binary.body KILN_HEADER_LENGTH=$(cat "$work/binary.len") \
  run binary -s bench/wrk_post.lua "http://127.0.0.1:$port/v2/models/fraud/infer"
ratio() { awk -v a="$(cat "$work/$1.rps")" -v b="$(cat "$work/baseline.rps")" 'BEGIN {printf "%.2f", a/b}'; }
echo "json / baseline   $(ratio json)"
echo "binary / baseline $(ratio binary)"
echo "start to ready    $(( (t1 - t0) / 1000000 )) ms (process start to first 200 from /v2/health/ready, 4 demo models)"
echo "idle RSS          $(( rss_kb / 1024 )) MB (4 demo models loaded, 5 sessions)"
echo "binary size       $(du -k target/release/kiln | cut -f1) KB (stripped release)"

#!/usr/bin/env bash
# gRPC vs REST at batch 1 on `fraud`, same load tool (h2load), same run, same concurrency:
#   rest-json    HTTP/1.1, JSON tensors
#   rest-binary  HTTP/1.1, binary tensor extension
#   grpc         HTTP/2 (h2c), ModelInfer with raw_input_contents (a pre-framed body)
# h2load counts HTTP statuses, not grpc-status, so success is checked with kiln's own
# statistics (success count must rise by exactly the number of requests sent).
#   bash bench/grpc_vs_rest.sh [REQUESTS=200000] [CLIENTS=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
requests=${1:-200000}
clients=${2:-16}
command -v h2load >/dev/null || { echo "needs h2load: apt-get install nghttp2-client" >&2; exit 1; }
bash scripts/setup-venv.sh --test
use_release_kiln
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
http=$(port); grpc=$(port)
target/release/kiln serve examples/models --http-port "$http" --grpc-port "$grpc" --log-level warn 2>/dev/null &
pid=$!
until curl -sf "127.0.0.1:$http/v2/health/ready" >/dev/null; do sleep 0.01; done

.venv/bin/python - "$work" <<'PY'
import json, struct, sys
from tritonclient.grpc import service_pb2
work = sys.argv[1]
row = json.load(open("examples/fixtures/fraud.json"))["inputs"][0]
raw = struct.pack("<30f", *row)
open(f"{work}/json.body", "w").write(json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}))
header = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                 "parameters": {"binary_data_size": len(raw)}}],
                     "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                 {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
open(f"{work}/binary.body", "wb").write(header + raw)
open(f"{work}/binary.len", "w").write(str(len(header)))
req = service_pb2.ModelInferRequest(model_name="fraud")
req.inputs.add(name="input", datatype="FP32", shape=[1, 30])
req.raw_input_contents.append(raw)
msg = req.SerializeToString()
open(f"{work}/grpc.body", "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY

successes() {
  curl -s "127.0.0.1:$http/v2/models/fraud/stats" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["inference_stats"]["success"]["count"])'
}
run() { # name, h2load args...
  local name=$1; shift
  local before after out rps
  before=$(successes)
  out=$(h2load -n "$requests" -c "$clients" "$@" 2>&1)
  after=$(successes)
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  printf '%-12s %10s req/s   kiln-counted successes %d of %d sent\n' "$name" "$rps" "$((after - before))" "$requests"
  echo "$rps" > "$work/$name.rps"
}
echo "kiln $(target/release/kiln --version | cut -d' ' -f2), h2load -n $requests -c $clients, $(nproc) cores shared with the load tool"
run warmup --h1 -d "$work/json.body" -H 'content-type: application/json' "http://127.0.0.1:$http/v2/models/fraud/infer" >/dev/null
run rest-json --h1 -d "$work/json.body" "http://127.0.0.1:$http/v2/models/fraud/infer"
run rest-binary --h1 -d "$work/binary.body" -H "inference-header-content-length: $(cat "$work/binary.len")" \
  "http://127.0.0.1:$http/v2/models/fraud/infer"
run grpc -m 1 -d "$work/grpc.body" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://127.0.0.1:$grpc/inference.GRPCInferenceService/ModelInfer"
awk -v g="$(cat "$work/grpc.rps")" -v j="$(cat "$work/rest-json.rps")" -v b="$(cat "$work/rest-binary.rps")" \
  'BEGIN {printf "grpc / rest-json %.2f   grpc / rest-binary %.2f\n", g/j, g/b}'

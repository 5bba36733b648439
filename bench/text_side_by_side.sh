#!/usr/bin/env bash
# Sentence embeddings (all-MiniLM-L6-v2; kiln serves the demo's Hugging Face folder, the Python
# prototype the ONNX export in ../shared): kiln vs the usual Python prototype
# (FastAPI + uvicorn[standard] + tokenizers + onnxruntime, bench/text_fastapi_server.py, 1 and
# 2 workers), batch-1 requests and 32-sentence requests, same load tool (kiln bench, v2 JSON),
# same concurrency, one run. Reports sentences/s and p99.
#   bash bench/text_side_by_side.sh [SECONDS=8] [CONCURRENCY=8]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-8}
conc=${2:-8}
shared=../shared/models/all-minilm-l6-v2
bash scripts/setup-venv.sh --test  # places the Hugging Face folder in examples/models/all-minilm-l6-v2/1
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-bench.txt
use_release_kiln
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
.venv/bin/python - "$work" "$shared" <<'PY'
import json, sys
work, shared = sys.argv[1:]
sentences = [s for s in json.load(open(f"{shared}/reference_embeddings.json"))["sentences"] if s][:10]
pool = (sentences * 8)[:32]
for n in (1, 32):
    json.dump({"inputs": [{"name": "text", "shape": [n], "datatype": "BYTES", "data": pool[:n] if n > 1 else [sentences[1]]}]},
              open(f"{work}/req{n}.json", "w"))
PY
kp=$(port)
mkdir -p "$work/repo" && cp -al examples/models/all-minilm-l6-v2 "$work/repo/"  # the encoder alone
target/release/kiln serve "$work/repo" --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
until curl -sf "127.0.0.1:$kp/v2/health/ready" >/dev/null; do sleep 0.05; done
row() { # label url n
  local json
  json=$(target/release/kiln bench all-minilm-l6-v2 --url "$2" --protocol rest-json --input "$work/req$3.json" -c "$conc" -d "$secs" --warmup 2 --json 2>/dev/null)
  .venv/bin/python -c 'import json,sys; r=json.loads(sys.argv[1]); n=int(sys.argv[3]); print("| %s | %d | %.0f | %.0f | %.1f | %.1f | %d |" % (sys.argv[2], n, r["throughput"], r["throughput"]*n, r["latency_us"]["p50"]/1000, r["latency_us"]["p99"]/1000, r["errors"]))' "$json" "$1" "$3"
}
echo "| server | sentences/request | req/s | sentences/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|---|---|"
for n in 1 32; do row kiln "127.0.0.1:$kp" "$n"; done
for w in 1 2; do
  fp=$(port)
  (cd bench && ../.venv/bin/python text_fastapi_server.py "../$shared" --port "$fp" --workers "$w") & pids+=($!)
  until curl -sf "127.0.0.1:$fp/v2/models/all-minilm-l6-v2" >/dev/null; do sleep 0.1; done
  for n in 1 32; do row "fastapi-${w}w" "127.0.0.1:$fp" "$n"; done
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

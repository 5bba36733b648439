#!/usr/bin/env bash
# fraud_ensemble (two models in parallel, blended, thresholded) at batch 1: kiln's pipeline vs
# the same ensemble as a FastAPI + onnxruntime endpoint (1 and 2 workers), same load tool
# (kiln bench, v2 JSON), same concurrency, one run.
#   bash bench/ensemble.sh [SECONDS=6] [CONCURRENCY=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-6}
conc=${2:-16}
bash scripts/setup-venv.sh --test
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-bench.txt
use_release_kiln
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
kp=$(port)
target/release/kiln serve examples/models --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
until curl -sf "127.0.0.1:$kp/v2/health/ready" >/dev/null; do sleep 0.05; done
row() { bench_row "$1" "$2" fraud_ensemble "$3"; } # label url protocol
echo "| server | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|"
row "kiln pipeline, REST JSON" "127.0.0.1:$kp" rest-json
row "kiln pipeline, REST binary" "127.0.0.1:$kp" rest-binary
for w in 1 2; do
  fp=$(port)
  (cd bench && ../.venv/bin/python ensemble_fastapi_server.py ../examples/models --port "$fp" --workers "$w") & pids+=($!)
  until curl -sf "127.0.0.1:$fp/v2/models/fraud_ensemble" >/dev/null; do sleep 0.1; done
  row "FastAPI ensemble, $w worker(s)" "127.0.0.1:$fp" rest-json
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

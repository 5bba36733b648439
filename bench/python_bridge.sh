#!/usr/bin/env bash
# kiln.Model.predict vs onnxruntime.InferenceSession.run from Python (batch 1 per-call cost,
# batch 256 throughput, 1 and 2 Python threads), and the same batch-1 call through
# tritonclient HTTP/gRPC to `kiln serve` (the cost of a process boundary).
#   bash bench/python_bridge.sh [SECONDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
bash scripts/setup-venv.sh --test
use_release_kiln
cargo fetch --locked  # maturin's cargo metadata wants every locked crate
(cd python && ../.venv/bin/maturin develop --release --offline --locked --quiet)
http=$(port); grpc=$(port)
target/release/kiln serve examples/models --http-port "$http" --grpc-port "$grpc" --metrics-port 0 --log-level warn 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "127.0.0.1:$http/v2/health/ready" >/dev/null; do sleep 0.05; done
.venv/bin/python bench/python_bridge.py --seconds "${1:-3}" --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc"

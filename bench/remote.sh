#!/usr/bin/env bash
# What a remote pipeline step costs: `fraud` at batch 1 called directly on kiln A vs through a
# one-step pipeline on kiln B whose `remote` step calls A (REST binary, then gRPC). Same load
# tool (kiln bench, REST binary), same concurrency, one run; A, B and the load share the cores.
#   bash bench/remote.sh [SECONDS=6] [CONCURRENCY=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-6}
conc=${2:-16}
bash scripts/setup-venv.sh --test
use_release_kiln
pids=()
work=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
ap=$(port); ag=$(port)
target/release/kiln serve examples/models --http-port "$ap" --grpc-port "$ag" --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
until curl -sf "127.0.0.1:$ap/v2/health/ready" >/dev/null; do sleep 0.05; done
for kind in rest grpc; do
  url=$([[ $kind == rest ]] && echo "http://127.0.0.1:$ap" || echo "127.0.0.1:$ag")
  mkdir -p "$work/repo/far_$kind"
  cat > "$work/repo/far_$kind/pipeline.toml" <<TOML
[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 30]
[[steps]]
name = "far"
remote = { url = "$url", model = "fraud", protocol = "$kind" }
inputs = { input = "input" }
outputs = [{ name = "label", datatype = "INT64", shape = [-1] }, { name = "probabilities", datatype = "FP32", shape = [-1, 2] }]
[[outputs]]
name = "label"
from = "far.label"
[[outputs]]
name = "probabilities"
from = "far.probabilities"
TOML
done
bp=$(port)
target/release/kiln serve "$work/repo" --http-port "$bp" --grpc-port 0 --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
until curl -sf "127.0.0.1:$bp/v2/health/ready" >/dev/null; do sleep 0.05; done
row() { bench_row "$1" "$2" "$3" rest-binary; } # label url model
echo "| path | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|"
row "client → A: fraud" "127.0.0.1:$ap" fraud
row "client → B: pipeline, remote step over REST → A" "127.0.0.1:$bp" far_rest
row "client → B: pipeline, remote step over gRPC → A" "127.0.0.1:$bp" far_grpc

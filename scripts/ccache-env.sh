# Sourced by .ci/run and scripts/test.sh: when ccache is installed, CMake builds — llama.cpp,
# compiled by llama-cpp-sys-2's build script for clippy and again for the test build (cargo
# runs that build script once per mode), and by llama-cpp-python's wheel — go through it, so the
# same C/C++ file is compiled once. CMake reads these variables from the environment.
if command -v ccache >/dev/null; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
  # The two llama.cpp builds run in different target/ folders: hash paths relative to here.
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR=1
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-2G}"
fi
# llama.cpp's SIMD for this CPU (AVX-512 where it has it), the same for kiln and the reference.
source "$(dirname "${BASH_SOURCE[0]}")/llama-simd.sh"

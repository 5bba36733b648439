#!/usr/bin/env bash
# What building kiln needs beyond Rust: llama.cpp (the LLM engine) is compiled from source by
# llama-cpp-sys-2 with CMake and libclang (bindgen). Installs Debian's packages when they are
# missing (root only); otherwise says what to install.
set -euo pipefail
if command -v cmake >/dev/null && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "install-build-deps: installing cmake clang libclang-dev (to build llama.cpp)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake clang libclang-dev >/dev/null
else
  echo "install-build-deps: building kiln needs cmake and libclang: apt-get install cmake clang libclang-dev" >&2
  exit 1
fi

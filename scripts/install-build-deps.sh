#!/usr/bin/env bash
# What building kiln needs beyond Rust: llama.cpp (the LLM engine) is compiled from source by
# llama-cpp-sys-2 with CMake and libclang (bindgen). Installs Debian's packages when they are
# missing (root only); otherwise says what to install. ccache is optional: with it, llama.cpp's
# C/C++ objects are compiled once and reused by every later build that compiles the same files
# (clippy's check and the test build each run llama-cpp-sys-2's build script; see
# scripts/ccache-env.sh).
set -euo pipefail
if command -v cmake >/dev/null && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && command -v ccache >/dev/null; then
  exit 0
fi
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "install-build-deps: installing cmake clang libclang-dev ccache (to build llama.cpp)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake clang libclang-dev ccache >/dev/null
elif ! command -v cmake >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "install-build-deps: building kiln needs cmake and libclang: apt-get install cmake clang libclang-dev (and ccache, optional)" >&2
  exit 1
fi

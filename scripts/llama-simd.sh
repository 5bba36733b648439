# Sourced by the scripts that build llama.cpp (kiln's, through llama-cpp-sys-2, and the reference
# llama-cpp-python wheel of scripts/setup-venv.sh): on an x86-64 CPU with AVX-512 (F, CD, VL,
# DQ, BW), llama.cpp is built with it — and with VBMI, VNNI and BF16 when the CPU has them —
# the ~15 % decode speed llama.cpp's own native build has over the x86-64-v3 (AVX2) baseline
# that .cargo/config.toml sets. Both builds read the same answer, so kiln and its reference
# compute alike (their greedy texts are compared token for token). KILN_PORTABLE=1 keeps the
# baseline (a binary for other machines). Exports the GGML_* variables llama-cpp-sys-2 passes to
# CMake and sets $llama_simd_flags, the same as CMake arguments.
llama_simd_flags=""
if [[ "${KILN_PORTABLE:-0}" != 1 && $(uname -m) == x86_64 && -r /proc/cpuinfo ]]; then
  _kiln_cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  _kiln_has() { [[ $_kiln_cpu_flags == *" $1 "* ]]; }
  if _kiln_has avx512f && _kiln_has avx512cd && _kiln_has avx512vl && _kiln_has avx512dq && _kiln_has avx512bw; then
    export GGML_AVX512=ON
    llama_simd_flags="-DGGML_AVX512=ON"
    for _kiln_pair in VBMI:avx512vbmi VNNI:avx512_vnni BF16:avx512_bf16; do
      if _kiln_has "${_kiln_pair#*:}"; then
        export "GGML_AVX512_${_kiln_pair%%:*}=ON"
        llama_simd_flags="$llama_simd_flags -DGGML_AVX512_${_kiln_pair%%:*}=ON"
      fi
    done
  fi
  unset -f _kiln_has
  unset _kiln_cpu_flags _kiln_pair
fi

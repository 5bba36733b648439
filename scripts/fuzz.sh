#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of what a client or an operator can feed
# kiln: the v2 JSON and binary request decoders, the gRPC ModelInferRequest conversion,
# config.toml and pipeline.toml. Bounded: SECONDS per target (default 60).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (rustup's, already on this machine) and installs cargo-fuzz
# from crates.io when missing. Corpora grow in fuzz/corpus/ (not committed) from the seeds in
# fuzz/seeds/. A crash stops its target; the input lands in fuzz/artifacts/<target>/ and is
# copied to fuzz/regressions/<target>/, which `cargo test` replays forever after
# (crates/kiln-protocol/tests/fuzz_regressions.rs, crates/kiln-engine/tests/fuzz_regressions.rs).
# Prints one line per target: executions, executions/s, new corpus entries, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(v2_json_request v2_binary_request grpc_infer_request model_config pipeline_toml)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# pipeline_toml loads example models on ONNX Runtime.
bash scripts/setup-venv.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)}"

# No sanitizer: kiln's crates forbid unsafe code, so libFuzzer hunts panics, aborts,
# overflows (debug assertions on) and runaway allocation (-rss_limit_mb).
flags=(-s none --debug-assertions)
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")

status=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  corpora=("corpus/$target" "seeds/$target")
  [ -d "fuzz/regressions/$target" ] && corpora+=("regressions/$target")
  log="fuzz/artifacts/$target/last-run.log"
  set +e
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$target" "${corpora[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 -timeout=10 \
      -print_final_stats=1) >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  added=$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  echo "$target: ${runs:-?} executions in ${seconds}s (${rate:-?}/s), ${added:-?} new corpus entries, $crashes crash input(s), exit $rc"
  if [ "$crashes" -gt 0 ] || [ $rc -ne 0 ]; then
    status=1
    mkdir -p "fuzz/regressions/$target"
    find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) \
      -exec cp {} "fuzz/regressions/$target/" \;
    tail -40 "$log"
  fi
done
exit $status

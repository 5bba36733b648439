#!/usr/bin/env bash
# Two LLMs under --llm-memory-budget (issue #29): SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M,
# 2 threads, 4 slots x 1024 tokens each. Three servers in turn: no budget (both loaded at
# start), a budget that holds both, a budget that holds one (each request to the other model
# unloads the idle one and loads its own). Rows: time to ready, process RSS after start and
# after requests to each model in turn, and the latency of a 16-token completion when its
# model is loaded vs when it must load first. Writes bench/results/llm_budget.md.
#   bash bench/llm_budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
bash scripts/setup-venv.sh --llm
use_release_kiln
bench_workspace
py=.venv/bin/python
smollm2=$PWD/examples/models/smollm2/1/model.gguf
gemma=$($py -c 'import sys; sys.path.insert(0, "python/tests"); from conftest import gemma_gguf; print(gemma_gguf())')
for m in smollm2 gemma; do
  mkdir -p "$work/repo/$m/1"
  gguf=$smollm2; [ "$m" = gemma ] && gguf=$gemma
  ln "$gguf" "$work/repo/$m/1/model.gguf" 2>/dev/null || cp "$gguf" "$work/repo/$m/1/model.gguf"
  printf 'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 1024\nmax_sequences = 4\n' > "$work/repo/$m/config.toml"
done

# run LABEL [FLAGS...]: one server, the rows for it.
run() {
  local label=$1; shift
  local p; p=$(port)
  local started; started=$(date +%s.%N)
  target/release/kiln serve "$work/repo" --http-port "$p" --grpc-port 0 --metrics-port 0 --records off --points off \
    "$@" > "$work/$label.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$p/v2/health/ready"
  local ready; ready=$(date +%s.%N)
  $py - "$label" "$p" "$pid" "$started" "$ready" <<'PY'
import json, sys, time, urllib.request
label, port, pid = sys.argv[1], sys.argv[2], sys.argv[3]
ready = float(sys.argv[5]) - float(sys.argv[4])
base = f"http://127.0.0.1:{port}"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def models():
    with urllib.request.urlopen(base + "/v1/models") as r:
        return {m["id"]: m for m in json.load(r)["data"]}
def complete(model):
    body = json.dumps({"model": model, "prompt": "The capital of France is", "max_tokens": 16,
                       "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        json.load(r)
    return (time.perf_counter() - t) * 1000
loaded = lambda: "+".join(m for m, i in models().items() if i.get("loaded")) or "none"
row = {"label": label, "ready_s": ready, "rss_start_mib": rss(), "loaded_at_start": loaded()}
cold, warm, peak = [], [], row["rss_start_mib"]
for model in ["smollm2", "gemma", "smollm2", "gemma", "smollm2", "gemma"]:
    was_loaded = models()[model]["loaded"]
    ms = complete(model)
    (warm if was_loaded else cold).append(ms)
    peak = max(peak, rss())
    warm.append(complete(model))  # again, now loaded
row.update(rss_end_mib=rss(), rss_peak_mib=peak, loaded_at_end=loaded(),
           completion_loaded_ms=sorted(warm)[len(warm) // 2],
           completion_loading_ms=sorted(cold)[len(cold) // 2] if cold else None, loads_on_demand=len(cold))
print(json.dumps(row))
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# What each model counts: a server whose budget holds both says it in /v1/models.
p=$(port)
target/release/kiln serve "$work/repo" --http-port "$p" --grpc-port 0 --metrics-port 0 --records off --points off \
  --llm-memory-budget 64GiB > "$work/sizes.log" 2>&1 &
spid=$!
pids+=("$spid")
wait_http "http://127.0.0.1:$p/v2/health/ready"
sizes=$(curl -s "http://127.0.0.1:$p/v1/models" |
  $py -c 'import json,sys; d={m["id"]: m["budgeted_bytes"] for m in json.load(sys.stdin)["data"]}; print(d["smollm2"], d["gemma"])')
kill "$spid"; wait "$spid" 2>/dev/null || true
read -r small big <<< "$sizes"
{
  run no-budget
  run budget-both --llm-memory-budget $((small + big))
  run budget-one --llm-memory-budget $((big + small / 2))
} > "$work/rows.jsonl"

$py - "$work/rows.jsonl" "$small" "$big" > "$out/llm_budget.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib = lambda b: int(b) / 2**20
print(f"Two LLMs under --llm-memory-budget (bench/llm_budget.sh): SmolLM2 counts {mib(sys.argv[2]):.0f} MiB, "
      f"Gemma 3 270M {mib(sys.argv[3]):.0f} MiB (file + 4 x 1024 KV cells + buffers); requests alternate "
      "smollm2, gemma x3, a 16-token greedy completion each, then the same again with its model loaded.")
print()
print("| server | ready s | loaded at start | RSS start MiB | RSS peak MiB | RSS end MiB | completion, model loaded ms | completion, model loading first ms | loads on demand |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    loading = "—" if r["completion_loading_ms"] is None else f"{r['completion_loading_ms']:.0f}"
    print(f"| {r['label']} | {r['ready_s']:.2f} | {r['loaded_at_start']} | {r['rss_start_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
          f"{r['rss_end_mib']:.0f} | {r['completion_loaded_ms']:.0f} | {loading} | {r['loads_on_demand']} |")
PY
cat "$out/llm_budget.md"

#!/usr/bin/env bash
# The side-by-side benchmark (issue #4): one machine, one run, one load tool (`kiln bench`),
# the same concurrency for every server. For `fraud` (GradientBoosting) and `digits_mlp` (MLP):
#   ceiling   raw ONNX Runtime in-process: from Python (InferenceSession.run) and from Rust
#             (kiln's engine, no server), batch 1 and batch 256
#   kiln      REST JSON, REST binary, gRPC; dynamic batching off and on
#   python    FastAPI + uvicorn[standard] + onnxruntime (bench/fastapi_server.py), 1 and 2 workers
# then p99 under open-loop load at 80 % of kiln's REST-binary maximum.
# Writes bench/results/side_by_side.{md,json} and SVG plots.
#   bash bench/side_by_side.sh [SECONDS=8] [CONCURRENCY=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-8}
conc=${2:-16}
bash scripts/setup-venv.sh --test
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-bench.txt
use_release_kiln
kiln=target/release/kiln
bench_workspace

# Two repositories: as shipped (batching off), and with dynamic batching on.
cp -r examples/models "$work/plain"
cp -r examples/models "$work/batched"
for m in fraud digits_mlp; do
  printf 'instances = 2\nmax_batch_size = 64\nmax_queue_delay_us = 200\n' > "$work/batched/$m/config.toml"
done

results="$work/results.jsonl"
: > "$results"
bench() { # label model args...
  local label=$1 model=$2; shift 2
  local json
  json=$($kiln bench "$model" -d "$secs" --warmup 1 --json "$@" 2>/dev/null) || { echo "  $label: FAILED" >&2; return; }
  .venv/bin/python -c 'import json,sys; r=json.loads(sys.argv[3]); r["label"]=sys.argv[1]; r["model"]=sys.argv[2]; print(json.dumps(r))' \
    "$label" "$model" "$json" >> "$results"
  .venv/bin/python -c 'import json,sys; r=json.loads(sys.argv[1]); l=r["latency_us"]; print("  %-28s %10.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d" % (sys.argv[2], r["throughput"], l["p50"]/1000, l["p99"]/1000, r["errors"]))' "$json" "$label"
}

echo "== ceilings: raw ONNX Runtime in-process, one thread"
for m in fraud digits_mlp; do
  .venv/bin/python bench/ort_python.py "examples/models/$m/1/model.onnx" --seconds "$secs" --batches 1,256 > "$work/ort_$m.json"
  echo "  $m ort-python $(cat "$work/ort_$m.json")"
  bench "kiln-in-process-b1" "$m" --protocol in-process --model-path "examples/models/$m" -c 1
  bench "kiln-in-process-b256" "$m" --protocol in-process --model-path "examples/models/$m" -c 1 --batch 256
done

hp=$(port); gp=$(port); bhp=$(port); bgp=$(port)
$kiln serve "$work/plain" --http-port "$hp" --grpc-port "$gp" --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
$kiln serve "$work/batched" --http-port "$bhp" --grpc-port "$bgp" --metrics-port 0 --log-level warn 2>/dev/null & pids+=($!)
wait_http "127.0.0.1:$hp/v2/health/ready"; wait_http "127.0.0.1:$bhp/v2/health/ready"

for m in fraud digits_mlp; do
  echo "== kiln, $m, concurrency $conc"
  bench "kiln-rest-json" "$m" --url "127.0.0.1:$hp" --protocol rest-json -c "$conc"
  bench "kiln-rest-binary" "$m" --url "127.0.0.1:$hp" --protocol rest-binary -c "$conc" --plot "$out/kiln_rest_binary_$m.svg"
  bench "kiln-grpc" "$m" --url "127.0.0.1:$gp" --protocol grpc -c "$conc"
  bench "kiln-rest-binary-batched" "$m" --url "127.0.0.1:$bhp" --protocol rest-binary -c "$conc"
  bench "kiln-grpc-batched" "$m" --url "127.0.0.1:$bgp" --protocol grpc -c "$conc"
  bench "kiln-rest-binary-batched-c64" "$m" --url "127.0.0.1:$bhp" --protocol rest-binary -c 64
done

for workers in 1 2; do
  fp=$(port)
  (cd bench && KILN_FASTAPI_REPO="$work/plain" ../.venv/bin/python fastapi_server.py "$work/plain" --port "$fp" --workers "$workers") & pids+=($!)
  wait_http "127.0.0.1:$fp/v2/models/fraud"
  for m in fraud digits_mlp; do
    echo "== FastAPI + uvicorn, $workers worker(s), $m"
    bench "fastapi-${workers}w" "$m" --url "127.0.0.1:$fp" --protocol rest-json -c "$conc"
  done
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

echo "== p99 at 80 % of kiln's REST-binary maximum (open loop)"
for m in fraud digits_mlp; do
  max=$(.venv/bin/python -c 'import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r["label"]=="kiln-rest-binary" and r["model"]==sys.argv[2]: print(int(r["throughput"]))' "$results" "$m")
  rate=$(( max * 8 / 10 ))
  bench "kiln-rest-binary-open-80pct" "$m" --url "127.0.0.1:$hp" --protocol rest-binary --rate "$rate" --threads 2
done

.venv/bin/python - "$results" "$work" "$out" "$secs" "$conc" <<'PY'
import json, sys
results, work, out, secs, conc = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
def get(label, model):
    return next((r for r in rows if r["label"] == label and r["model"] == model), None)
lines = [f"Side by side, {secs} s per row, concurrency {conc}, kiln bench as the load tool (2 cores shared).", ""]
lines += ["| model | row | req/s | rows/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
summary = {}
for model in ("fraud", "digits_mlp"):
    ort_py = json.load(open(f"{work}/ort_{model}.json"))
    lines.append(f"| {model} | ort-python batch 1 | {ort_py['1']['calls_per_s']:.0f} | {ort_py['1']['rows_per_s']:.0f} | {ort_py['1']['us_per_call']/1000:.3f} | | |")
    lines.append(f"| {model} | ort-python batch 256 | {ort_py['256']['calls_per_s']:.0f} | {ort_py['256']['rows_per_s']:.0f} | {ort_py['256']['us_per_call']/1000:.3f} | | |")
    for r in rows:
        if r["model"] != model:
            continue
        batch = 256 if r["label"].endswith("b256") else 1
        lines.append(f"| {model} | {r['label']} | {r['throughput']:.0f} | {r['throughput']*batch:.0f} | {r['latency_us']['p50']/1000:.3f} | {r['latency_us']['p99']/1000:.3f} | {r['errors']} |")
    fast = max((get(f"fastapi-{w}w", model) or {"throughput": 0})["throughput"] for w in (1, 2)) or 1
    best_inproc = max(ort_py["256"]["rows_per_s"], (get("kiln-in-process-b256", model) or {"throughput": 0})["throughput"] * 256)
    batched = max((get(l, model) or {"throughput": 0})["throughput"] for l in ("kiln-rest-binary-batched", "kiln-grpc-batched", "kiln-rest-binary-batched-c64"))
    s = {
        "rest_binary_vs_fastapi": get("kiln-rest-binary", model)["throughput"] / fast,
        "rest_json_vs_fastapi": get("kiln-rest-json", model)["throughput"] / fast,
        "grpc_vs_fastapi": get("kiln-grpc", model)["throughput"] / fast,
        "batched_served_rows_vs_inprocess_best": batched / best_inproc,
        "p99_ms_at_80pct": (get("kiln-rest-binary-open-80pct", model) or {"latency_us": {"p99": 0}})["latency_us"]["p99"] / 1000,
    }
    summary[model] = s
lines += ["", "| model | REST binary / FastAPI | REST JSON / FastAPI | gRPC / FastAPI | batched rows/s / in-process best | p99 at 80 % load |", "|---|---|---|---|---|---|"]
for model, s in summary.items():
    lines.append(f"| {model} | {s['rest_binary_vs_fastapi']:.1f}x | {s['rest_json_vs_fastapi']:.1f}x | {s['grpc_vs_fastapi']:.1f}x | {s['batched_served_rows_vs_inprocess_best']*100:.1f} % | {s['p99_ms_at_80pct']:.2f} ms |")
text = "\n".join(lines)
print(text)
open(f"{out}/side_by_side.md", "w").write(text + "\n")
json.dump({"rows": rows, "summary": summary}, open(f"{out}/side_by_side.json", "w"), indent=1)
PY

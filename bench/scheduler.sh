#!/usr/bin/env bash
# The scheduler benchmark (issue #16): kiln against Triton 2.51 + its ONNX Runtime backend, side
# by side in one run, the same load tool for every row — wrk (REST JSON, 1 thread) and h2load
# (gRPC, a pre-framed ModelInfer body, 1 thread) — on two models, 1 intra-op thread everywhere:
#   digits_mlp  StandardScaler + MLP(32) on the digits data (64 features; ../shared/peers/triton/make_model.py)
#   fraud       the demo's GradientBoosting classifier (30 features)
#   digits_wide StandardScaler + MLP(1024, 1024), for the 128-caller rows: a model where batching pays
# Servers: {1, 2} instances x dynamic batching {off, on} (max batch 64, queue delay 0), for kiln
# and for Triton. Then: 128 callers with batching on and off; kiln's empty exchange
# (GET /v2/health/live) against its served rate; in-process batch 1 through the engine against
# raw ONNX Runtime calls from Python; start-up of a 16-model repository (fraud, digits_mlp,
# breast_cancer, digits_wide, 4 of each; and 16 x digits_wide), one model at a time
# (KILN_LOAD_THREADS=1, the old behaviour) and in parallel.
# Writes bench/results/scheduler.md.
#   bash bench/scheduler.sh [SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-5}
bash scripts/setup-venv.sh --test
use_release_kiln
kiln=$PWD/target/release/kiln
peer=${TRITON_PEER:-$HOME/.cache/kiln-peers/triton}
[ -x "$peer/serve.sh" ] || TRITON_PEER=$peer bash ../shared/peers/triton/setup.sh
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }
bench_workspace

# The models, and one request body per model and protocol.
.venv/bin/python ../shared/peers/triton/make_model.py "$work/src" >/dev/null
cp examples/models/fraud/1/model.onnx "$work/fraud.onnx"
cp "$work/src/digits_mlp/1/model.onnx" "$work/digits_mlp.onnx"
.venv/bin/python bench/scheduler_bodies.py "$work"

# Repositories: kiln (config.toml) and Triton (config.pbtxt) for every setting.
for inst in 1 2; do
  for batch in off on; do
    .venv/bin/python bench/scheduler_bodies.py "$work" --repos "$inst" "$batch"
  done
done

rows="$work/rows.txt"
: > "$rows"
row() { echo "$*" | tee -a "$rows"; }

wrk_rest() { # label url model conc -> "rps p50_ms p99_ms errors"
  local r
  r=$(KILN_BODY="$work/$3.json" wrk -t1 -c"$4" -d"${secs}s" --latency -s bench/wrk_post.lua "http://$2/v2/models/$3/infer")
  echo "$r" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ {rps=$2} /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} /Non-2xx/ {err=$5}
    END {printf "%.0f %.2f %.2f %d\n", rps, p50, p99, err}'
}

h2_grpc() { # hostport model conc -> "rps p50_ms p99_ms errors"
  local log="$work/h2.log"
  rm -f "$log"
  h2load -c "$3" -m 1 -t 1 -D "$secs" --warm-up-time 1 --log-file "$log" \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/$2.grpc" \
    "http://$1/inference.GRPCInferenceService/ModelInfer" > "$work/h2.out" 2>&1 || true
  .venv/bin/python - "$log" "$secs" "$work/h2.out" <<'PY'
import sys
log, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lat, bad = [], 0
for line in open(log):
    f = line.split()
    if len(f) < 3: continue
    if f[1] != "200": bad += 1
    lat.append(int(f[2]))
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else 0
print("%.0f %.2f %.2f %d" % (len(lat) / secs, pick(0.5), pick(0.99), bad))
PY
}

measure() { # server setting model conc hostport(http) hostport(grpc)
  local rest grpc
  curl -sf "$5/v2/models/$3/ready" >/dev/null
  KILN_BODY="$work/$3.json" wrk -t1 -c"$4" -d1s -s bench/wrk_post.lua "http://$5/v2/models/$3/infer" >/dev/null
  rest=$(wrk_rest "$1" "$5" "$3" "$4")
  grpc=$(h2_grpc "$6" "$3" "$4")
  row "$1 $2 $3 $4 rest $rest"
  row "$1 $2 $3 $4 grpc $grpc"
}

start_kiln() { # repo -> sets hp gp
  hp=$(port); gp=$(port)
  $kiln serve "$1" --http-port "$hp" --grpc-port "$gp" --metrics-port 0 --records off --log-level warn > "$work/kiln.log" 2>&1 &
  pids+=($!)
  wait_http "127.0.0.1:$hp/v2/health/ready"
}

start_triton() { # repo -> sets hp gp
  hp=$(port); gp=$(port)
  bash "$peer/serve.sh" "$1" "$hp" "$gp" > "$work/triton.log" 2>&1 &
  pids+=($!)
  local t=0
  until curl -sf "127.0.0.1:$hp/v2/health/ready" >/dev/null 2>&1; do
    sleep 0.1; t=$((t + 1)); [ $t -lt 600 ] || { tail "$work/triton.log"; exit 1; }
  done
}

stop_last() { kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; sleep 0.5; }

echo "== kiln and Triton, 32 callers (label setting model callers protocol req/s p50 p99 errors)"
for inst in 1 2; do
  for batch in off on; do
    setting="${inst}inst-batch-$batch"
    start_kiln "$work/kiln-$inst-$batch"
    for m in digits_mlp fraud; do measure kiln "$setting" "$m" 32 "127.0.0.1:$hp" "127.0.0.1:$gp"; done
    if [ "$inst$batch" = "2on" ] || [ "$inst$batch" = "1off" ]; then
      for m in digits_mlp fraud digits_wide; do
        KILN_BODY="$work/$m.json" wrk -t1 -c128 -d1s -s bench/wrk_post.lua "http://127.0.0.1:$hp/v2/models/$m/infer" >/dev/null
        row "kiln $setting $m 128 rest $(wrk_rest x "127.0.0.1:$hp" "$m" 128)"
      done
    fi
    if [ "$inst$batch" = "1off" ]; then
      r=$(wrk -t1 -c32 -d"${secs}s" --latency "http://127.0.0.1:$hp/v2/health/live" |
        awk '/Requests\/sec/ {print $2}')
      row "kiln empty-exchange - 32 rest $r 0 0 0"
    fi
    stop_last
    start_triton "$work/triton-$inst-$batch"
    for m in digits_mlp fraud; do measure triton "$setting" "$m" 32 "127.0.0.1:$hp" "127.0.0.1:$gp"; done
    stop_last
  done
done

echo "== in-process, batch 1, one caller"
for m in digits_mlp fraud; do
  ort=$(.venv/bin/python bench/ort_python.py "$work/$m.onnx" --seconds "$secs" --batches 1 |
    .venv/bin/python -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["1"]["calls_per_s"])')
  row "ort-python in-process $m 1 call $ort 0 0 0"
  r=$($kiln bench "$m" --protocol in-process --model-path "$work/kiln-1-off/$m" -c 1 -d "$secs" --warmup 1 --json 2>/dev/null |
    .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print("%.0f %.3f %.3f %d" % (r["throughput"], l["p50"]/1000, l["p99"]/1000, r["errors"]))')
  row "kiln in-process $m 1 call $r"
done

echo "== start-up of 16 models"
mkdir -p "$work/sixteen"
i=0
for round in 1 2 3 4; do
  for m in fraud digits_mlp breast_cancer; do
    i=$((i + 1)); cp -r "examples/models/$m" "$work/sixteen/${m}_$i"
  done
  i=$((i + 1)); cp -r "$work/kiln-1-off/digits_wide" "$work/sixteen/digits_wide_$i"
done
mkdir -p "$work/sixteen-wide"
for i in $(seq 1 16); do cp -r "$work/kiln-1-off/digits_wide" "$work/sixteen-wide/digits_wide_$i"; done
for repo in sixteen sixteen-wide; do
  for loaders in 1 default 1 default; do
    hp=$(port)
    t0=$(date +%s.%N)
    if [ "$loaders" = 1 ]; then export KILN_LOAD_THREADS=1; else unset KILN_LOAD_THREADS; fi
    $kiln serve "$work/$repo" --http-port "$hp" --grpc-port 0 --metrics-port 0 --records off --log-level warn > "$work/kiln16.log" 2>&1 &
    pids+=($!)
    wait_http "127.0.0.1:$hp/v2/health/ready"
    t1=$(date +%s.%N)
    row "kiln $repo loaders-$loaders - ready_s $(echo "$t1 - $t0" | bc) 0 0 0"
    stop_last
  done
done
unset KILN_LOAD_THREADS

.venv/bin/python bench/scheduler_report.py "$rows" "$secs" | tee "$out/scheduler.md"

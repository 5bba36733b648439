#!/usr/bin/env bash
# What OpenTelemetry tracing costs on the request path, side by side in one run: the digits MLP
# at batch 1 and the fraud_ensemble pipeline (13 spans a request), wrk -t1 -c32, REST JSON,
# records off (to see tracing alone): traces off vs on (100 % sampling, exporting over OTLP/gRPC
# to a live receiver, bench/otlp_receiver.py, on the same 2 cores) vs on with the collector down
# (the spans are made, every export fails at once: what tracing costs kiln itself), interleaved
# twice.
#   bash bench/traces.sh [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
wrk_bench_setup "${1:-10}"
.venv/bin/python - "$work" <<'PY'
import json, sys
import numpy as np
work = sys.argv[1]
for name, n in (("digits", 64), ("fraud", 30)):
    x = np.random.default_rng(0).random((1, n), dtype=np.float32)
    json.dump({"inputs": [{"name": "input", "shape": [1, n], "datatype": "FP32", "data": x.ravel().tolist()}]},
              open(f"{work}/{name}.json", "w"))
PY
rport=$(port)
.venv/bin/python bench/otlp_receiver.py "$rport" > "$work/receiver.out" & receiver=$!
pids+=($receiver)
row() { # label model body traces(on|off|down)
  local otlp=()
  [ "$4" = on ] && otlp=(--otlp-endpoint "http://127.0.0.1:$rport")
  # Nothing listens on port 1: spans are made, exports fail at once, nothing is sent.
  [ "$4" = down ] && otlp=(--otlp-endpoint "http://127.0.0.1:1")
  start_kiln_on examples/models --records off "${otlp[@]}"
  # CPU time (user + system, clock ticks) of kiln and of the receiver around the load: who
  # pays for tracing on the shared cores.
  local k0 r0 k1 r1 measured
  k0=$(cpu_ticks "${pids[-1]}"); r0=$(cpu_ticks "$receiver")
  measured=$(wrk_post "http://127.0.0.1:$kp/v2/models/$2/infer" "$work/$3.json" "$secs")
  sleep 1
  k1=$(cpu_ticks "${pids[-1]}"); r1=$(cpu_ticks "$receiver")
  local requests; requests=$(wrk_requests)
  local cpu; cpu=$(awk -v k=$((k1 - k0)) -v r=$((r1 - r0)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.1f | %.1f", k * 1e6 / hz / n, r * 1e6 / hz / n}')
  local spans; spans=$(curl -s "127.0.0.1:$kp/metrics" | awk '/^kiln_trace_spans_exported_total/ {e=$2} /^kiln_trace_spans_dropped_total/ {d=$2} END {printf "%d exported / %d dropped", e, d}')
  echo "| $1 | $measured | $cpu | $spans |"
  stop_kiln_last
}
echo "kiln $(target/release/kiln --version | cut -d' ' -f2), $(nproc) cores shared by kiln, the receiver and wrk"
echo
echo "| wrk -t1 -c32, batch 1, records off | req/s | p99 | kiln CPU µs/req | receiver CPU µs/req | spans |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  for model in digits_mlp fraud_ensemble; do
    body=digits; [ "$model" = fraud_ensemble ] && body=fraud
    row "$model, traces off ($round)" "$model" "$body" off
    row "$model, traces on, 100 % ($round)" "$model" "$body" on
    row "$model, traces on, collector down ($round)" "$model" "$body" down
  done
done
kill "$receiver"; wait "$receiver" 2>/dev/null || true
echo
echo "The receiver got $(cat "$work/receiver.out") over the run."

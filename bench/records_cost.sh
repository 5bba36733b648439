#!/usr/bin/env bash
# What the prediction log costs on the request path, side by side in one run:
#  1. the digits MLP (scaler + MLP 64→32→10) at batch 1, wrk -t1 -c32, REST JSON: records off,
#     SQLite async (default policy: every request, inputs and outputs capped at 64 KiB),
#     off again (the noise), SQLite durable;
#  2. one 65,536-row request (64 features, binary extension), 20 in a row, records off vs on:
#     latency percentiles from kiln bench.
#   bash bench/records_cost.sh [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
bash scripts/setup-venv.sh --test >/dev/null
use_release_kiln
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
.venv/bin/python - "$work" <<'PY'
import json, sys
import numpy as np
work = sys.argv[1]
x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
json.dump({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]},
          open(f"{work}/one.json", "w"))
big = np.random.default_rng(1).random((65536, 64), dtype=np.float32)
json.dump({"inputs": [{"name": "input", "shape": [65536, 64], "datatype": "FP32", "data": big.ravel().tolist()}]},
          open(f"{work}/big.json", "w"))
PY
start_kiln() { # records args...; sets $kp
  kp=$(port)
  target/release/kiln serve examples/models --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn \
    --dashboard off "$@" >/dev/null 2>&1 & pids+=($!)
  until curl -sf "127.0.0.1:$kp/v2/health/ready" >/dev/null; do sleep 0.05; done
}
stop_kiln() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }
n=0
wrk_row() { # label, records args...
  local label=$1; shift
  n=$((n + 1))
  start_kiln "$@"
  local out; out=$(KILN_BODY=$work/one.json wrk -t1 -c32 -d"${secs}s" --latency -s bench/wrk_post.lua \
    "http://127.0.0.1:$kp/v2/models/digits_mlp/infer")
  local rate p99
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  local written=""
  if [[ $* != *"--records off"* ]]; then
    sleep 1
    written=$(curl -s "127.0.0.1:$kp/metrics" | awk '/^kiln_records_written_total/ {w=$2} /^kiln_records_dropped_total/ {d=$2} END {printf "%d written / %d dropped", w, d}')
  fi
  stop_kiln
  local per_row=""
  if [[ $* == *"sqlite:"* ]]; then
    # Pages in use (indexes included) per stored prediction.
    local file="$*"
    file=${file##*sqlite:}
    per_row=$(.venv/bin/python - "${file%% *}" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute("SELECT count(*) FROM predictions").fetchone()[0]
used = (c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]) * c.execute("PRAGMA page_size").fetchone()[0]
print(round(used / max(rows, 1)))
PY
)
  fi
  echo "| $label | $rate | $p99 | $written | $per_row |"
}
echo "kiln $(target/release/kiln --version | cut -d' ' -f2), $(nproc) cores shared by kiln, SQLite's writer and the load tool"
echo
echo "| digits_mlp, batch 1, wrk -c32 | req/s | p99 | rows | bytes per row |"
echo "|---|---|---|---|---|"
# Interleaved, three times: the run-to-run noise on a shared 2-core box is ±10 %.
for round in 1 2 3; do
  wrk_row "records off ($round)" --records off
  wrk_row "SQLite, async, default policy ($round)" --records "sqlite:$work/a$round.sqlite"
done
wrk_row "SQLite, durable" --records "sqlite:$work/d.sqlite" --records-mode durable
echo
echo "| one 65,536-row request (×20, binary) | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|"
big_row() { # label, records args...
  local label=$1; shift
  start_kiln "$@"
  target/release/kiln bench digits_mlp --url "127.0.0.1:$kp" --protocol rest-binary --input "$work/big.json" \
    -c 1 -n 20 --warmup 0 --json 2>/dev/null |
    .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin)["latency_us"]; print("| %s | %.1f | %.1f | %.1f |" % (sys.argv[1], r["p50"]/1000, r["p99"]/1000, r["max"]/1000))' "$label"
  stop_kiln
}
big_row "records off" --records off
big_row "SQLite, async" --records "sqlite:$work/big.sqlite"
big_row "records off (again)" --records off

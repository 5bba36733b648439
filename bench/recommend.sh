#!/usr/bin/env bash
# The recommend example end to end, side by side in one run: kiln (items collection -> 200
# candidates -> exported GBM ranker -> top 10, one pipeline) vs the Python prototype (FastAPI +
# numpy exact search + scikit-learn's GradientBoostingClassifier, bench/recommend_fastapi_server.py,
# 1 and 2 workers), one user vector a request over v2 JSON REST, `kiln bench` closed loop.
#   bash bench/recommend.sh [seconds=10]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
secs=${1:-10}
bash scripts/setup-venv.sh --test
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-bench.txt
use_release_kiln
bench_workspace
mkdir -p "$work/repo"
for m in items recommend_ranker recommend; do cp -r "examples/models/$m" "$work/repo/"; done
.venv/bin/python - "$work" <<'PY'
import json, sys
fx = json.load(open("examples/fixtures/recommend.json"))
json.dump({"inputs": [{"name": "user", "datatype": "FP32", "shape": [1, 16], "data": fx["inputs"][0]}]},
          open(f"{sys.argv[1]}/req.json", "w"))
PY
kp=$(port)
target/release/kiln serve "$work/repo" --http-port "$kp" --grpc-port 0 --metrics-port 0 --points off --log-level warn 2>/dev/null & pids+=($!)
wait_http "127.0.0.1:$kp/v2/models/recommend/ready"
row() { # label url callers
  local json
  json=$(target/release/kiln bench recommend --url "$2" --protocol rest-json --input "$work/req.json" -c "$3" -d "$secs" --warmup 2 --json 2>/dev/null)
  .venv/bin/python -c 'import json,sys; r=json.loads(sys.argv[1]); print("| %s | %s | %.0f | %.2f | %.2f | %d |" % (sys.argv[2], sys.argv[3], r["throughput"], r["latency_us"]["p50"]/1000, r["latency_us"]["p99"]/1000, r["errors"]))' "$json" "$1" "$3"
}
same() { # url: the prototype and kiln give the same top 10 for the fixture's users?
  .venv/bin/python - "$1" "127.0.0.1:$kp" <<'PY'
import json, sys, requests
fx = json.load(open("examples/fixtures/recommend.json"))
body = {"inputs": [{"name": "user", "datatype": "FP32", "shape": [len(fx["inputs"]), 16], "data": sum(fx["inputs"], [])}]}
ans = [{o["name"]: o["data"] for o in requests.post(f"http://{u}/v2/models/recommend/infer", json=body).json()["outputs"]} for u in sys.argv[1:]]
same = sum(a == b for a, b in zip(ans[0]["items"], ans[1]["items"]))
print(f"same item at the same rank, prototype vs kiln: {same}/{len(ans[0]['items'])}", file=sys.stderr)
PY
}
echo "| server | callers | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|---|"
for c in 1 16; do row kiln "127.0.0.1:$kp" "$c"; done
for workers in 1 2; do
  fp=$(port)
  .venv/bin/python bench/recommend_fastapi_server.py --port "$fp" --workers "$workers" & pids+=($!)
  wait_http "127.0.0.1:$fp/v2/models/recommend"
  [[ $workers == 1 ]] && same "127.0.0.1:$fp"
  for c in 1 16; do row "FastAPI + numpy + scikit-learn ($workers worker$([[ $workers == 2 ]] && echo s))" "127.0.0.1:$fp" "$c"; done
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

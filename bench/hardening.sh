#!/usr/bin/env bash
# What the hardening costs, side by side in one run with one load tool (wrk, HTTP/1.1 keep-alive,
# 1 thread, 32 connections, fraud, one-row JSON request):
#   baseline   $KILN_BASELINE_BIN, when set: a kiln built before the connection layer
#              (axum::serve + tonic's server), e.g. from commit 13410cb
#   plain      this kiln, no TLS, no tokens (dashboard on, as by default)
#   no-dash    --dashboard off (no live sampler)
#   auth       --auth-token-file (every request carries a bearer token)
#   tls        --tls-cert/--tls-key (wrk speaks TLS 1.3 on the same keep-alive connections)
#   auth+tls   both
# The variants run interleaved, ROUNDS times (this machine's throughput drifts between runs);
# prints a markdown table of the medians: req/s, ratio to plain, latency p50/p99 (wrk's).
#   bash bench/hardening.sh [SECONDS=10] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-10}
rounds=${2:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
bash scripts/setup-venv.sh --test >/dev/null
use_release_kiln
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
token=$(openssl rand -hex 32)
echo "bench inference $token" > "$work/tokens"
.venv/bin/python - "$work/body.json" <<'PY'
import json, sys
rows = json.load(open("examples/fixtures/fraud.json"))["inputs"][:1]
json.dump({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": rows}]}, open(sys.argv[1], "w"))
PY
export KILN_BODY="$work/body.json"

run() { # label binary scheme args...
  local label=$1 bin=$2 scheme=$3; shift 3
  local port
  port=$(port)
  "$bin" serve examples/models --http-port "$port" --grpc-port 0 --metrics-port 0 --records off \
    --log-level warn "$@" 2>"$work/$label.log" &
  pid=$!
  until curl -skf "$scheme://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; do sleep 0.05; done
  local auth=()
  [[ "$label" == *auth* ]] && auth=(-H "Authorization: Bearer $token")
  wrk -t1 -c32 -d1s "${auth[@]}" -s bench/wrk_post.lua "$scheme://127.0.0.1:$port/v2/models/fraud/infer" >/dev/null
  wrk -t1 -c32 -d"${secs}s" --latency "${auth[@]}" -s bench/wrk_post.lua \
    "$scheme://127.0.0.1:$port/v2/models/fraud/infer" > "$work/$label.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$label.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/$label.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/$label.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/$label.txt")
  echo "$label $rps $p50 $p99 ${non2xx:-0}" >> "$work/rows"
}

: > "$work/rows"
for _ in $(seq "$rounds"); do
  if [ -n "${KILN_BASELINE_BIN:-}" ]; then run baseline "$KILN_BASELINE_BIN" http; fi
  run plain target/release/kiln http
  run no-dash target/release/kiln http --dashboard off
  run auth target/release/kiln http --auth-token-file "$work/tokens"
  run tls target/release/kiln https --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
  run auth+tls target/release/kiln https --auth-token-file "$work/tokens" --tls-cert "$work/cert.pem" \
    --tls-key "$work/key.pem"
done

.venv/bin/python - "$work/rows" "$rounds" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99, bad = line.split()
    rows.setdefault(label, []).append((float(rps), p50, p99, int(bad)))
median = {k: statistics.median(r[0] for r in v) for k, v in rows.items()}
print(f"| fraud, 1 row JSON, wrk -t1 -c32, median of {sys.argv[2]} | req/s | vs plain | p50 (median run) | p99 (median run) | non-2xx |")
print("|---|---|---|---|---|---|")
for label, runs in rows.items():
    mid = sorted(runs)[len(runs) // 2]
    print(f"| {label} | {median[label]:.0f} | {median[label] / median['plain']:.2f}x | {mid[1]} | {mid[2]} | {sum(r[3] for r in runs)} |")
PY

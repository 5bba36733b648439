#!/usr/bin/env bash
# 10x overload: a deliberately slow model (bench/make_slow_model.py, 1 instance, queue of 64,
# 2 s request timeout) is measured closed-loop for its capacity, then driven open-loop at 10x
# that rate. Reports how many requests got a fast 429, the accepted requests' latency, and
# kiln's RSS sampled every second (bounded memory), then checks the server still answers.
#   bash bench/overload.sh [SECONDS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-20}
bash scripts/setup-venv.sh --test
use_release_kiln
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/models/slow/1"
.venv/bin/python bench/make_slow_model.py "$work/models/slow/1/model.onnx"
printf 'instances = 1\nmax_queue_size = 64\nrequest_timeout_ms = 2000\n' > "$work/models/slow/config.toml"
port=$(port)
target/release/kiln serve "$work/models" --http-port "$port" --grpc-port 0 --metrics-port 0 --log-level warn 2>/dev/null &
pid=$!
until curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null; do sleep 0.05; done
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$pid/status; }

echo "== capacity (closed loop, 4 callers, 5 s)"
target/release/kiln bench slow --url "127.0.0.1:$port" -c 4 -d 5 --warmup 1 --json > "$work/cap.json"
cap=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput"])' "$work/cap.json")
rate=$(.venv/bin/python -c "print(round(10 * $cap, 1))")
echo "capacity ${cap} req/s -> offering ${rate} req/s for ${secs} s; RSS before: $(rss) MB"
( for _ in $(seq "$secs"); do rss; sleep 1; done ) > "$work/rss.txt" &
target/release/kiln bench slow --url "127.0.0.1:$port" --rate "$rate" -d "$secs" --warmup 0 --threads 2
echo "RSS during overload (MB, per second): $(tr '\n' ' ' < "$work/rss.txt")"
echo "RSS after: $(rss) MB"
curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null && echo "server still ready: yes"

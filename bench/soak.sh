#!/usr/bin/env bash
# Soak: kiln at the closed-loop maximum for MINUTES with nobody scraping /metrics — RSS
# sampled every 10 s, and (records on) the prediction log's file size under its default
# retention (7 d / 2 GiB; RECORDS_MAX_BYTES overrides). Load: wrk -t1 -c16, REST JSON, `fraud`
# at batch 1. Prints one markdown table per run and the growth after the first minute.
#   bash bench/soak.sh [MINUTES=10] [off|on|both=both]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
minutes=${1:-10}
which=${2:-both}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
bash scripts/setup-venv.sh --test >/dev/null
use_release_kiln
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
.venv/bin/python -c 'import json; print(json.dumps({"inputs":[{"name":"input","shape":[1,30],"datatype":"FP32","data":[0.5]*30}]}))' >"$work/body.json"
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Anonymous memory: the heap, what a leak grows. RSS also counts the file pages SQLite reads
# through mmap (up to its 256 MB mmap_size): page cache, reclaimable, not kiln's own memory.
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
soak() { # label, records args...
  local label=$1; shift
  local kp; kp=$(port)
  target/release/kiln serve examples/models --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn \
    --dashboard on "$@" 2>"$work/kiln.log" & pids+=($!)
  local pid=${pids[-1]}
  until curl -sf "127.0.0.1:$kp/v2/health/ready" >/dev/null; do sleep 0.05; done
  KILN_BODY=$work/body.json wrk -t1 -c16 -d"$((minutes * 60 + 5))s" -s bench/wrk_post.lua \
    "http://127.0.0.1:$kp/v2/models/fraud/infer" >"$work/wrk.txt" 2>&1 &
  local wrk_pid=$!
  echo "### $label"
  echo
  echo "| t (s) | RSS MB | of which anonymous MB | records file MB |"
  echo "|---|---|---|---|"
  local t=0 first="" last="" start="" first_anon="" last_anon=""
  while kill -0 "$wrk_pid" 2>/dev/null && ((t <= minutes * 60)); do
    local rss anon; rss=$(rss_kb "$pid"); anon=$(anon_kb "$pid")
    local db="-"
    if [[ -n ${RECORDS_FILE:-} && -f $RECORDS_FILE ]]; then
      db=$(du -cm "$RECORDS_FILE"* 2>/dev/null | tail -n 1 | cut -f1)
    fi
    ((t % 60 == 0)) && echo "| $t | $((rss / 1024)) | $((anon / 1024)) | $db |"
    [[ $t == 60 ]] && first=$rss && first_anon=$anon
    last=$rss
    last_anon=$anon
    [[ -z $start ]] && start=$rss
    sleep 10
    t=$((t + 10))
  done
  wait "$wrk_pid" || true
  local rate; rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  echo
  echo "$label: ${rate} req/s over ${minutes} min; RSS $((start / 1024)) MB at start, $((first / 1024)) MB at 1 min, $((last / 1024)) MB at the end: growth after the first minute $(awk -v a="$first" -v b="$last" 'BEGIN {printf "%+.1f %%", (b - a) * 100 / a}') (anonymous: $((first_anon / 1024)) → $((last_anon / 1024)) MB, $(awk -v a="$first_anon" -v b="$last_anon" 'BEGIN {printf "%+.1f %%", (b - a) * 100 / a}'))"
  echo
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
if [[ $which == off || $which == both ]]; then
  RECORDS_FILE="" soak "records off" --records off
fi
if [[ $which == on || $which == both ]]; then
  RECORDS_FILE=$work/soak.sqlite soak "records on (SQLite, async, retention ${RECORDS_MAX_BYTES:-2GiB})" \
    --records "sqlite:$work/soak.sqlite" --records-max-bytes "${RECORDS_MAX_BYTES:-2GiB}"
fi

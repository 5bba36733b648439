#!/usr/bin/env bash
# What the prediction log costs: `fraud` at batch 1 with records off, async/all and
# durable/all, on SQLite (embedded) and PostgreSQL (a local server this script starts), same
# load tool (kiln bench, REST binary), same concurrency, one run.
#   bash bench/records.sh [SECONDS=6] [CONCURRENCY=16]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
secs=${1:-6}
conc=${2:-16}
bash scripts/setup-venv.sh --test
use_release_kiln
work=$(mktemp -d)
chmod 755 "$work"
pids=()
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | tail -n 1)")
as_pg=(); [[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
pg_port=$(port)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/pg" && [[ ${#as_pg[@]} -gt 0 ]] && chown postgres "$work/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" --auth=trust -U postgres >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -w -l "$work/pg/log" \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
n=0
row() { # label records mode
  n=$((n + 1))
  local records=$2
  if [[ $records == postgres ]]; then
    "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "bench$n"
    records="postgres://postgres@127.0.0.1:$pg_port/bench$n"
  elif [[ $records == sqlite ]]; then
    records="sqlite:$work/bench$n.sqlite"
  fi
  local kp; kp=$(port)
  target/release/kiln serve examples/models --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn \
    --records "$records" --records-mode "$3" 2>/dev/null & pids+=($!)
  until curl -sf "127.0.0.1:$kp/v2/health/ready" >/dev/null; do sleep 0.05; done
  bench_row "$1" "127.0.0.1:$kp" fraud rest-binary
  if [[ $records != off ]]; then
    sleep 1
    echo "|   rows logged | $(curl -s "127.0.0.1:$kp/metrics" | awk '/^kiln_records_written_total/ {print $2}') written, $(curl -s "127.0.0.1:$kp/metrics" | awk '/^kiln_records_dropped_total/ {print $2}') dropped | | | |"
  fi
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}
echo "| records | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|"
row "off" off async
row "SQLite, async/all" sqlite async
row "off (again: the noise between runs)" off async
row "SQLite, durable/all" sqlite durable
row "PostgreSQL, async/all" postgres async
row "PostgreSQL, durable/all" postgres durable

# Sourced by the bench/*.sh scripts (after they cd to the repository root).

# Builds the release binary and points kiln at the .venv's ONNX Runtime.
use_release_kiln() {
  source scripts/ccache-env.sh
  cargo build --release --locked -q -p kiln-cli
  ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
  export ORT_DYLIB_PATH
}

# A free TCP port on 127.0.0.1 (for servers that are not kiln, which reports its own).
port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# One markdown row: `kiln bench` closed loop on MODEL at URL over PROTOCOL ($conc callers,
# $secs seconds): label | req/s | p50 ms | p99 ms | errors.
bench_row() { # label url model protocol
  target/release/kiln bench "$3" --url "$2" --protocol "$4" -c "$conc" -d "$secs" --warmup 1 --json 2>/dev/null |
    .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print("| %s | %.0f | %.2f | %.2f | %d |" % (sys.argv[1], r["throughput"], r["latency_us"]["p50"]/1000, r["latency_us"]["p99"]/1000, r["errors"]))' "$1"
}

# A results folder ($out), a scratch folder ($work) and the servers a script starts ($pids),
# killed and removed when the script exits.
bench_workspace() {
  out=bench/results
  mkdir -p "$out"
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# Stops the script unless wrk (the HTTP load tool) is installed.
needs_wrk() { command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }; }

# wrk -t1 -c32 for SECS seconds, POSTing the JSON file BODY to URL: prints "req/s | p99". Keeps
# wrk's whole report in $work/wrk.out (see wrk_requests).
wrk_post() { # url body secs
  local out; out=$(KILN_BODY=$2 wrk -t1 -c32 -d"$3s" --latency -s bench/wrk_post.lua "$1")
  printf '%s\n' "$out" >"$work/wrk.out"
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") | $(awk '$1 == "99%" {print $2}' <<<"$out")"
}

# How many requests the last wrk_post completed.
wrk_requests() { awk '/requests in/ {print $1}' "$work/wrk.out"; }

# A process's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# What every wrk benchmark starts with: $secs from the first argument (default 10), wrk, the
# test venv, the release binary, and the workspace (see bench_workspace).
wrk_bench_setup() { # seconds
  secs=$1
  needs_wrk
  bash scripts/setup-venv.sh --test >/dev/null
  use_release_kiln
  bench_workspace
}

# Starts release kiln on REPO with extra flags (records, dashboard off unless given); sets $kp
# to its REST port and waits until it is ready.
start_kiln_on() { # repo flags...
  kp=$(port)
  local repo=$1; shift
  target/release/kiln serve "$repo" --http-port "$kp" --grpc-port 0 --metrics-port 0 --log-level warn \
    --dashboard off "$@" >/dev/null 2>&1 & pids+=($!)
  wait_http "127.0.0.1:$kp/v2/health/ready"
}

# Stops the kiln started last.
stop_kiln_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }

# Polls URL until it answers 2xx.
wait_http() { until curl -sf "$1" >/dev/null 2>&1; do sleep 0.05; done; }

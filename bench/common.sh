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

# Polls URL until it answers 2xx.
wait_http() { until curl -sf "$1" >/dev/null 2>&1; do sleep 0.05; done; }

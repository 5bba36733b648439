#!/usr/bin/env bash
# What a shadow version costs the callers, side by side in one run: the digits MLP at batch 1,
# wrk -t1 -c32, REST JSON, records off; the model alone vs with `[rollout] shadow = 2` (version 2
# a copy of version 1, so every copy runs the same model again and agrees), interleaved twice.
# Prints req/s, p99 and the shadow's sent / dropped / agreed counts.
#   bash bench/rollout.sh [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
wrk_bench_setup "${1:-10}"
for repo in plain shadowed; do
  mkdir -p "$work/$repo/digits_mlp"
  cp -r examples/models/digits_mlp/1 examples/models/digits_mlp/config.toml "$work/$repo/digits_mlp/"
done
cp -r examples/models/digits_mlp/1 "$work/shadowed/digits_mlp/2"
printf '\n[rollout]\nshadow = 2\n' >> "$work/shadowed/digits_mlp/config.toml"
.venv/bin/python - "$work" <<'PY'
import json, sys
import numpy as np
x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
json.dump({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]},
          open(f"{sys.argv[1]}/one.json", "w"))
PY
row() { # label repo
  start_kiln_on "$work/$2" --records off
  local measured; measured=$(wrk_post "http://127.0.0.1:$kp/v2/models/digits_mlp/infer" "$work/one.json" "$secs")
  sleep 1
  local shadow="-"
  if [ "$2" = shadowed ]; then
    shadow=$(curl -s "127.0.0.1:$kp/v1/models/digits_mlp/rollout" | .venv/bin/python -c \
      'import json,sys; c=json.load(sys.stdin)["shadow_comparison"]; print("%d sent / %d dropped / %d agreed" % (c["sent"], c["dropped"], c["agreed"]))')
  fi
  echo "| $1 | $measured | $shadow |"
  stop_kiln_last
}
echo "kiln $(target/release/kiln --version | cut -d' ' -f2), $(nproc) cores shared by kiln and wrk"
echo
echo "| digits_mlp, batch 1, wrk -t1 -c32 | req/s | p99 | shadow |"
echo "|---|---|---|---|"
for round in 1 2; do
  row "no rollout ($round)" plain
  row "shadow = 2 ($round)" shadowed
done

#!/usr/bin/env bash
# Rerank latency: one query x 50 passages (~60 tokens each) at POST /v1/rerank, sequential
# requests, on a cross-encoder of ms-marco-MiniLM-L-6-v2's shape (BertForSequenceClassification,
# 6 layers, hidden 384, 12 heads; random weights written here: no cross-encoder ships on PyPI, and
# latency depends on the shape, not the weights), release build, one instance, THREADS intra-op
# threads (config.toml `threads`; kiln's default is 1). Prints p50, p90, p99 and pairs/s.
#   bash bench/rerank.sh [REQUESTS=100] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
requests=${1:-100}
threads=${2:-2}
bash scripts/setup-venv.sh --test >/dev/null
use_release_kiln
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
.venv/bin/python - "$work/repo/reranker/1" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "python/tests")
from test_rerank import write_safetensors
folder = Path(sys.argv[1]); folder.mkdir(parents=True)
h, layers, inner, vocab = 384, 6, 1536, 30522
rng = np.random.default_rng(0)
w = {}
def put(name, *shape):
    w[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
for name, shape in [("embeddings.word_embeddings.weight", (vocab, h)), ("embeddings.position_embeddings.weight", (512, h)),
                    ("embeddings.token_type_embeddings.weight", (2, h)), ("embeddings.LayerNorm.weight", (h,)),
                    ("embeddings.LayerNorm.bias", (h,)), ("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]:
    put("bert." + name, *shape)
for l in range(layers):
    p = f"bert.encoder.layer.{l}."
    for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
        put(p + part + ".weight", h, h); put(p + part + ".bias", h)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        put(p + ln + ".weight", h); put(p + ln + ".bias", h)
    put(p + "intermediate.dense.weight", inner, h); put(p + "intermediate.dense.bias", inner)
    put(p + "output.dense.weight", h, inner); put(p + "output.dense.bias", h)
put("classifier.weight", 1, h); put("classifier.bias", 1)
write_safetensors(folder / "model.safetensors", w)
(folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert",
    "hidden_size": h, "num_attention_heads": 12, "num_hidden_layers": layers, "intermediate_size": inner,
    "max_position_embeddings": 512, "type_vocab_size": 2, "id2label": {"0": "LABEL_0"}}))
(folder / "tokenizer.json").write_bytes(Path("examples/models/all-minilm-l6-v2/1/tokenizer.json").read_bytes())
PY
printf 'kind = "rerank"\nthreads = %s\n' "$threads" > "$work/repo/reranker/config.toml"
start_kiln_on "$work/repo"
.venv/bin/python - "127.0.0.1:$kp" "$requests" "$threads" <<'PY'
import sys, time
import numpy as np, requests
url, n = sys.argv[1], int(sys.argv[2])
words = "card payment declined transfer account fee statement loan branch mobile app password reset limit".split()
rng = np.random.default_rng(1)
passages = [" ".join(rng.choice(words, size=50)) for _ in range(50)]
body = {"model": "reranker", "query": "why was my card payment declined abroad?", "documents": passages, "top_n": 5}
s = requests.Session()
for _ in range(5):
    s.post(f"http://{url}/v1/rerank", json=body).raise_for_status()
times = []
for _ in range(n):
    t = time.perf_counter()
    r = s.post(f"http://{url}/v1/rerank", json=body)
    times.append(time.perf_counter() - t)
    r.raise_for_status()
tokens = r.json()["usage"]["total_tokens"]
ms = np.array(times) * 1000
print(f"threads {sys.argv[3]}: 1 query x 50 passages ({tokens} tokens a request), {n} requests: "
      f"p50 {np.percentile(ms, 50):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
      f"{50 * n / sum(times):.0f} pairs/s")
PY

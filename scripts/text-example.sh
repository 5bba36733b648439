#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (team data in ../shared/models, not committed) into the demo
# repository as examples/models/all-minilm-l6-v2/1/{model.onnx,tokenizer.json}: hard links when
# the file system allows, copies otherwise. kiln serves only files inside a repository, so the
# example cannot point at ../shared directly.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${KILN_SHARED_MODELS:-../shared/models}/all-minilm-l6-v2
dest=examples/models/all-minilm-l6-v2/1
if [[ ! -f $shared/model.onnx ]]; then
  echo "text-example: $shared/model.onnx not found (team data in ../shared)" >&2
  exit 1
fi
mkdir -p "$dest"
for f in model.onnx tokenizer.json; do
  [[ -f $dest/$f ]] || ln "$shared/$f" "$dest/$f" 2>/dev/null || cp "$shared/$f" "$dest/$f"
done
echo "text-example: $dest ready"

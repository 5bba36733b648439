"""The built-in dashboard, end to end in a real browser: Debian's headless Chromium driven by
playwright-core (python/tests/e2e/dashboard.mjs) against a real `kiln serve` of the demo
repository plus the test models (one of which fails to load). The model list shows every
model; the try-it form answers with the same probabilities as a direct v2 call; the live
request count rises after requests are sent; the failed model shows its load error; the
pipeline graph, recent predictions and quality render; the demo LLM's chat box streams an answer. Screenshots of each view go to
$KILN_SCREENSHOTS (default: the test's temporary folder); docs/screenshots/ holds a set."""

import json
import os
import shutil
import subprocess

import pytest
import requests

from conftest import ROOT, KilnServer, make_repository

E2E = ROOT / "python" / "tests" / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_ready():
    if not os.path.exists(CHROMIUM):
        return f"Chromium not found at {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
    if not (E2E / "node_modules" / "playwright-core").exists():
        return "playwright-core not installed (scripts/test.sh runs npm ci in python/tests/e2e)"
    if not shutil.which("node"):
        return "node not found"
    return None


def test_dashboard_in_chromium(tmp_path, fixture):
    reason = browser_ready()
    if reason:
        pytest.skip(reason)
    server = KilnServer(make_repository(tmp_path))
    tokens = tmp_path / "guarded" / "tokens"
    tokens.parent.mkdir()
    tokens.write_text("viewer inference 0123456789abcdef0123456789\n")
    guarded = KilnServer(make_repository(tmp_path / "guarded"), ["--auth-token-file", str(tokens)])
    shots = os.environ.get("KILN_SCREENSHOTS") or str(tmp_path / "screenshots")
    os.makedirs(shots, exist_ok=True)
    fraud = fixture("fraud")
    config = {
        "url": f"http://{server.url}",
        "screenshots": shots,
        "broken": "broken",
        "fraud_rows": fraud["inputs"][:20],
        "labels": fraud["labels"][:20],
        "auth_url": f"http://{guarded.url}",
        "auth_token": "0123456789abcdef0123456789",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        index = {m["name"]: m for m in requests.post(f"http://{server.url}/v2/repository/index", timeout=10).json()}
        result = subprocess.run(["node", str(E2E / "dashboard.mjs"), str(tmp_path / "config.json")],
                                capture_output=True, text=True, timeout=240, cwd=E2E)
        assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])

        # Every model of the repository is listed, the demo models among them.
        demo = {p.name for p in (ROOT / "examples" / "models").iterdir() if p.is_dir()}
        assert demo <= set(report["models"]), (demo, report["models"])
        assert set(report["models"]) == set(index), (set(index), report["models"])
        assert report["home_rows"] == len(index)

        # The model that failed to load shows the server's own reason.
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert index["broken"]["reason"] in report["load_error"], (index["broken"]["reason"], report["load_error"])

        # Try it: the same probabilities as a direct v2 call, as labelled bars.
        shown = report["try_probabilities"]
        assert [p["label"] for p in shown] == ["legit", "fraud"]
        assert [p["value"] for p in shown] == pytest.approx(report["direct_probabilities"], abs=1e-9)
        assert [p["value"] for p in shown] == pytest.approx(fraud["probabilities"][0], abs=1e-5)
        assert report["try_bars"] == 2
        assert "row 1 has 3 values, the model wants 30" in report["try_bad_row"]

        # Live: the request count rose after the requests were sent.
        assert report["live_after"] > report["live_before"], report
        assert report["charts"] >= 1

        # The pipeline's step graph, the prediction log and the quality view.
        assert {"in:input", "gbc", "lr", "blend", "decide"} <= set(report["pipeline_nodes"]), report["pipeline_nodes"]
        assert report["prediction_rows"] >= 1
        assert report["quality_accuracy"].startswith("accuracy"), report["quality_accuracy"]
        # Drift: the demo's fraud model has no export sample and no earlier hour: it says so.
        assert report["drift_state"] == "insufficient_data", report["drift_state"]
        assert report["console_errors"] == [], report["console_errors"]
        # The LLM is tagged as one, and its chat box streamed an answer with its speed.
        assert report["llm_tag"] == "llm"
        assert report["chat_answer"].strip(), report
        assert "tokens/s" in report["chat_stats"] and "finish:" in report["chat_stats"], report["chat_stats"]
        for name in ["models", "load-error", "try-it", "live", "pipeline", "records", "chat"]:
            assert os.path.getsize(os.path.join(shots, f"{name}.png")) > 10_000, name

        # Behind --auth-token-file the page asks for a token, then works with it; the records
        # views tell an inference-only token that they need the admin scope.
        assert "bearer token" in report["auth_prompt"]
        assert report["auth_models"] == len(index)
        assert "403" in report["auth_records"] and "admin scope" in report["auth_records"]
    finally:
        assert server.stop() == 0
        assert guarded.stop() == 0


def test_dashboard_honours_auth_and_can_be_turned_off(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("viewer inference 0123456789abcdef0123456789\n")
    server = KilnServer(make_repository(tmp_path), ["--auth-token-file", str(tokens)])
    base = f"http://{server.url}"
    try:
        # The page holds no data and is served to anyone; its data needs a token.
        page = requests.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and "/ui/app.js" in page.text
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert requests.get(f"{base}/ui/app.js", timeout=10).status_code == 200
        assert requests.get(f"{base}/v1/dashboard/models", timeout=10).status_code == 401
        assert requests.get(f"{base}/v1/dashboard/live", timeout=10).status_code == 401
        auth = {"Authorization": "Bearer 0123456789abcdef0123456789"}
        models = requests.get(f"{base}/v1/dashboard/models", headers=auth, timeout=10).json()
        ensemble = next(m for m in models["models"] if m["name"] == "fraud_ensemble")
        assert ensemble["kind"] == "pipeline" and [s["name"] for s in ensemble["steps"]][:2] == ["gbc", "lr"]
        # Collections are shown as collections, with their size, metric and index.
        items = next(m for m in models["models"] if m["name"] == "items")
        assert items["kind"] == "collection", items
        assert items["collection"]["count"] > 0 and items["collection"]["metric"] in ("cosine", "ip", "l2")
        assert items["collection"]["index"]["kind"] in ("hnsw", "exact") and items["collection"]["dim"] > 0
        assert requests.get(f"{base}/v1/dashboard/live", headers=auth, timeout=10).status_code == 200
        # The records views need the admin scope: the page shows the 403 it gets.
        assert requests.get(f"{base}/v1/predictions", headers=auth, timeout=10).status_code == 403
    finally:
        assert server.stop() == 0
    off = KilnServer(make_repository(tmp_path / "off"), ["--dashboard", "off"])
    try:
        assert requests.get(f"http://{off.url}/", timeout=10).status_code == 404
        assert requests.get(f"http://{off.url}/v1/dashboard/models", timeout=10).status_code == 404
    finally:
        assert off.stop() == 0

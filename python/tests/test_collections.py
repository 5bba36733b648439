"""Vector collections (`kind = "vector_index"`) through the real `kiln` binary: exact search
equals numpy's brute force, HNSW recall on clustered data, upsert/delete/filters over REST, the
KServe v2 path through tritonclient, durability across restart and `kill -9` (SQLite), two
processes sharing PostgreSQL, and precise 4xx answers that leave nothing half-written."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from conftest import ROOT, KilnServer, HAVE_MINILM, NO_MINILM, link_minilm
from test_records import postgres  # noqa: F401  (the throwaway PostgreSQL fixture)



def clustered(n, dim, seed=0, centers=32):
    """Points around `centers` random directions at varied spreads: not uniform noise."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, dim))
    which = rng.integers(0, centers, n)
    spread = rng.uniform(0.05, 0.3, n)[:, None]
    return (middle[which] + rng.normal(size=(n, dim)) * spread).astype(np.float32)


def collection(repo, name, dim, metric, exact=False, points=None, extra=""):
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        f'kind = "vector_index"\n[index]\ndim = {dim}\nmetric = "{metric}"\n' + ("exact = true\n" if exact else "") + extra)
    if points is not None:
        with open(folder / "points.jsonl", "w") as f:
            for p in points:
                f.write(json.dumps(p) + "\n")


def brute_force(data, queries, metric, k):
    if metric == "cosine":
        d = data / np.linalg.norm(data, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        scores = q @ d.T
        order = np.argsort(-scores, axis=1, kind="stable")
    elif metric == "ip":
        scores = queries @ data.T
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        scores = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")
    return order[:, :k], np.take_along_axis(scores, order[:, :k], axis=1)


def upsert(server, name, points, expect=200):
    r = requests.put(f"http://{server.url}/v1/collections/{name}/points", json={"points": points}, timeout=60)
    assert r.status_code == expect, r.text
    return r.json()


def search(server, name, expect=200, **body):
    r = requests.post(f"http://{server.url}/v1/collections/{name}/search", json=body, timeout=30)
    assert r.status_code == expect, r.text
    return r.json()


def load(server, name, data, payload=lambda i: None, batch=1000):
    for start in range(0, len(data), batch):
        points = [{"id": f"p{i}", "vector": data[i].tolist(), **({"payload": payload(i)} if payload(i) else {})}
                  for i in range(start, min(start + batch, len(data)))]
        upsert(server, name, points)


def v2_search(server, name, queries, k):
    client = httpclient.InferenceServerClient(url=server.url)
    q = httpclient.InferInput("query", list(queries.shape), "FP32")
    q.set_data_from_numpy(queries)
    kk = httpclient.InferInput("k", [1], "INT64")
    kk.set_data_from_numpy(np.array([k], dtype=np.int64))
    result = client.infer(name, [q, kk])
    return result.as_numpy("ids"), result.as_numpy("scores"), result.as_numpy("payloads")


@pytest.fixture(scope="module")
def data():
    return clustered(2000, 32, seed=1), clustered(50, 32, seed=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    repo = tmp_path_factory.mktemp("collections") / "models"
    for metric in ("cosine", "ip", "l2"):
        collection(repo, f"exact_{metric}", 32, metric, exact=True)
    collection(repo, "hnsw", 32, "cosine")
    collection(repo, "docs", 3, "cosine", exact=True, points=[
        {"id": "a", "vector": [1, 0, 0], "payload": {"lang": "en", "year": 2024}},
        {"id": "b", "vector": [0.9, 0.1, 0], "payload": {"lang": "de", "year": 2023}},
        {"id": "c", "vector": [0, 1, 0], "payload": {"lang": "en", "year": 2022}}])
    s = KilnServer(repo, ["--records", "off"])
    points, _ = data
    for metric in ("cosine", "ip", "l2"):
        load(s, f"exact_{metric}", points, payload=lambda i: {"row": i, "even": i % 2 == 0})
    load(s, "hnsw", points, payload=lambda i: {"row": i, "even": i % 2 == 0})
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_exact_search_equals_numpy_brute_force(server, data, metric):
    points, queries = data
    want_ids, want_scores = brute_force(points.astype(np.float64), queries.astype(np.float64), metric, 10)
    for i, q in enumerate(queries[:10]):
        got = search(server, f"exact_{metric}", vector=q.tolist(), k=10)["results"]
        assert [h["id"] for h in got] == [f"p{j}" for j in want_ids[i]]
        np.testing.assert_allclose([h["score"] for h in got], want_scores[i], rtol=1e-4, atol=1e-4)
        assert got[0]["payload"] == {"row": int(want_ids[i][0]), "even": int(want_ids[i][0]) % 2 == 0}
    # The same over KServe v2, all queries in one batch.
    ids, scores, payloads = v2_search(server, f"exact_{metric}", queries, 10)
    assert ids.shape == (50, 10) and scores.shape == (50, 10)
    assert [[v.decode() for v in row] for row in ids] == [[f"p{j}" for j in row] for row in want_ids]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert json.loads(payloads[0][0].decode())["row"] == int(want_ids[0][0])


def test_hnsw_recall_on_clustered_data(server, data):
    points, queries = data
    want_ids, _ = brute_force(points.astype(np.float64), queries.astype(np.float64), "cosine", 10)
    ids, _, _ = v2_search(server, "hnsw", queries, 10)
    got = [{int(v.decode()[1:]) for v in row} for row in ids]
    recall = np.mean([len(g & set(w)) / 10 for g, w in zip(got, want_ids)])
    assert recall >= 0.95, recall
    info = requests.get(f"http://{server.url}/v1/collections/hnsw", timeout=10).json()
    assert info["count"] == 2000 and info["index"]["kind"] == "hnsw" and info["state"] == "ready"
    assert info["index"]["m"] == 16 and info["dim"] == 32 and info["metric"] == "cosine"


def test_filters_upserts_and_deletes(server):
    q = [1.0, 0.05, 0.0]
    assert [h["id"] for h in search(server, "docs", vector=q, k=3)["results"]] == ["a", "b", "c"]
    assert [h["id"] for h in search(server, "docs", vector=q, k=3, filter={"lang": "en"})["results"]] == ["a", "c"]
    assert [h["id"] for h in search(server, "docs", vector=q, k=3, filter={"year": {"in": [2023, 2022]}})["results"]] == ["b", "c"]
    assert search(server, "docs", vector=q, k=3, filter={"lang": "fr"})["results"] == []
    assert "payload" not in search(server, "docs", vector=q, k=1, with_payload=False)["results"][0]
    # Upsert is seen at once; replacing moves the point; delete removes it.
    upsert(server, "docs", [{"id": "d", "vector": [1, 0.01, 0], "payload": {"lang": "fr"}}])
    assert search(server, "docs", vector=q, k=1, filter={"lang": "fr"})["results"][0]["id"] == "d"
    upsert(server, "docs", [{"id": "d", "vector": [0, 0, 1], "payload": {"lang": "fr"}}])
    assert search(server, "docs", vector=q, k=1)["results"][0]["id"] == "a"
    r = requests.post(f"http://{server.url}/v1/collections/docs/points/delete", json={"ids": ["d", "nope"]}, timeout=10)
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert requests.get(f"http://{server.url}/v1/collections/docs", timeout=10).json()["count"] == 3
    # A filtered v2 search with the filter as a BYTES input, as a pipeline step sends it.
    client = httpclient.InferenceServerClient(url=server.url)
    qi = httpclient.InferInput("query", [1, 3], "FP32")
    qi.set_data_from_numpy(np.array([q], dtype=np.float32))
    fi = httpclient.InferInput("filter", [1], "BYTES")
    fi.set_data_from_numpy(np.array([json.dumps({"lang": "de"}).encode()], dtype=object))
    out = client.infer("docs", [qi, fi])
    assert [v.decode() for v in out.as_numpy("ids")[0]] == ["b"] + [""] * 9  # padded to k = 10
    assert np.isnan(out.as_numpy("scores")[0][1:]).all()


def test_bad_input_is_a_precise_4xx_and_nothing_is_half_written(server):
    base = f"http://{server.url}/v1/collections"
    before = requests.get(f"{base}/docs", timeout=10).json()["count"]
    cases = [
        (requests.post, f"{base}/docs/search", {"vector": [1, 0]}, 400, "vector has 2 values; collection 'docs' has dim 3"),
        (requests.post, f"{base}/docs/search", {"vector": [1, 0, 0], "k": 5000}, 400, "1 to 1000 neighbours (max_k)"),
        (requests.post, f"{base}/docs/search", {"vector": [1, 0, 0], "filter": {"lang": ["en"]}}, 400,
         "filter on 'lang': an array is not a string, number or boolean"),
        (requests.post, f"{base}/docs/search", {"vector": [1, 0, 0], "filter": {"year": {"gt": 3}}}, 400, "unknown operator"),
        (requests.post, f"{base}/docs/search", {"text": "hello"}, 400, "has no embedder"),
        (requests.post, f"{base}/nope/search", {"vector": [1, 0, 0]}, 404, "unknown collection 'nope'"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": "ok", "vector": [1, 0, 0]}, {"id": "bad", "vector": [1, 0]}]}, 400,
         "points[1] ('bad'): vector has 2 values"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": "z", "vector": [0, 0, 0]}]}, 400, "a zero vector has no direction"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": "x", "vector": [1, 0, 0]}, {"id": "x", "vector": [0, 1, 0]}]}, 400,
         "id 'x' appears twice"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": "y", "vector": [1, 0, 0], "payload": [1]}]}, 400,
         "payload must be a JSON object"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": f"o{i}", "vector": [1, 0, 0]} for i in range(4097)]}, 400,
         "1 to 4096 points, not 4097"),
        (requests.put, f"{base}/docs/points", {"points": [{"id": "w", "vector": [1, 0, 0], "colour": 1}]}, 400, "unknown field `colour`"),
    ]
    for call, url, body, status, message in cases:
        r = call(url, json=body, timeout=30)
        assert r.status_code == status, (url, body if len(str(body)) < 200 else "...", r.text)
        assert message in r.json()["error"], r.text
    # NaN cannot be sent as JSON to the REST API; over v2 (binary) it is refused by name.
    client = httpclient.InferenceServerClient(url=server.url)
    qi = httpclient.InferInput("query", [2, 3], "FP32")
    qi.set_data_from_numpy(np.array([[1, 0, 0], [np.nan, 0, 0]], dtype=np.float32))
    with pytest.raises(Exception, match="query row 1: vector\\[0\\] is NaN"):
        client.infer("docs", [qi])
    wrong = httpclient.InferInput("query", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(Exception, match=r"input 'query' has shape \[1, 4\]; collection 'docs' takes \[N, 3\]"):
        client.infer("docs", [wrong])
    assert requests.get(f"{base}/docs", timeout=10).json()["count"] == before
    assert requests.get(f"http://{server.url}/v2/health/ready", timeout=5).status_code == 200


def test_points_survive_restart_and_kill_9(tmp_path):
    repo = tmp_path / "models"
    collection(repo, "notes", 3, "l2", exact=True, points=[{"id": "shipped", "vector": [5, 5, 5]}])
    store = f"sqlite:{tmp_path / 'points.sqlite'}"
    s = KilnServer(repo, ["--records", "off", "--points", store])
    acked = upsert(s, "notes", [{"id": f"n{i}", "vector": [i, 0, 0], "payload": {"i": i}} for i in range(100)])
    assert acked["durable"] is True and acked["seq"] >= 1
    r = requests.post(f"http://{s.url}/v1/collections/notes/points/delete", json={"ids": ["shipped", "n99"]}, timeout=10)
    assert r.json()["deleted"] == 2
    assert s.stop() == 0
    s = KilnServer(repo, ["--records", "off", "--points", store])
    info = requests.get(f"http://{s.url}/v1/collections/notes", timeout=10).json()
    assert info["count"] == 99, info  # the shipped point's deletion is durable too
    assert search(s, "notes", vector=[3.1, 0, 0], k=1)["results"][0] == {"id": "n3", "score": pytest.approx(0.01, abs=1e-5), "payload": {"i": 3}}
    # An acknowledged upsert survives kill -9.
    upsert(s, "notes", [{"id": "late", "vector": [0, 9, 0]}])
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(timeout=10)
    s.log.close()
    s = KilnServer(repo, ["--records", "off", "--points", store])
    try:
        assert search(s, "notes", vector=[0, 9, 0], k=1)["results"][0]["id"] == "late"
        assert requests.get(f"http://{s.url}/v1/collections/notes", timeout=10).json()["count"] == 100
    finally:
        assert s.stop() == 0


def test_two_processes_sharing_postgres_see_each_others_writes(tmp_path, postgres):  # noqa: F811
    url = postgres.new_database()
    repos = []
    for side in ("a", "b"):
        repo = tmp_path / side / "models"
        collection(repo, "shared", 3, "cosine", exact=True)
        repos.append(repo)
    a = KilnServer(repos[0], ["--records", "off", "--points", url, "--points-follow-ms", "100"])
    b = KilnServer(repos[1], ["--records", "off", "--points", url, "--points-follow-ms", "100"])
    try:
        upsert(a, "shared", [{"id": "from_a", "vector": [1, 0, 0]}])
        upsert(b, "shared", [{"id": "from_b", "vector": [0, 1, 0]}])
        requests.post(f"http://{a.url}/v1/collections/shared/points/delete", json={"ids": ["from_b"]}, timeout=10)
        upsert(a, "shared", [{"id": "again", "vector": [0, 0, 1]}])
        deadline = time.time() + 10
        seen = set()
        while time.time() < deadline:
            seen = {h["id"] for h in search(b, "shared", vector=[1, 1, 1], k=10)["results"]}
            if seen == {"from_a", "again"}:
                break
            time.sleep(0.05)
        assert seen == {"from_a", "again"}
        assert {h["id"] for h in search(a, "shared", vector=[1, 1, 1], k=10)["results"]} == {"from_a", "again"}
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def add_minilm(repo):
    """all-MiniLM-L6-v2's folder (config from examples, weights linked from ../shared)."""
    shutil.copytree(ROOT / "examples" / "models" / "all-minilm-l6-v2", repo / "all-minilm-l6-v2",
                    ignore=shutil.ignore_patterns("1"))
    assert link_minilm(repo / "all-minilm-l6-v2")


def wait_for_builds(server, n, seconds=20):
    """Waits until the log says a collection was built `n` times (at start, then each rebuild)."""
    deadline = time.time() + seconds
    while server.logs().count('"collection ready"') < n and time.time() < deadline:
        time.sleep(0.05)
    assert server.logs().count('"collection ready"') == n, server.logs()[-3000:]


def wait_for_count(server, name, want, seconds=20):
    deadline = time.time() + seconds
    info = {}
    while time.time() < deadline:
        r = requests.get(f"http://{server.url}/v1/collections/{name}", timeout=10)
        info = r.json() if r.status_code == 200 else {"status": r.status_code, "body": r.text}
        if info.get("count") == want and info.get("ready", True):
            return info
        time.sleep(0.05)
    raise AssertionError(f"{name}: wanted {want} points, have {info}")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_batches_that_straddle_store_pages_load_whole(tmp_path, backend, request):
    """Catch-up reads the store in pages of 2,048 rows and one upsert's points share one `seq`:
    a page boundary inside a batch once skipped the rest of it (3,000 acknowledged points came
    back as 2,048). At start, on a follower and on a reload, every acknowledged point loads."""
    url = request.getfixturevalue("postgres").new_database() if backend == "postgres" else f"sqlite:{tmp_path / 'points.sqlite'}"
    repos = []
    for side in ("writer", "follower"):
        repo = tmp_path / side / "models"
        collection(repo, "items", 4, "l2", exact=True, points=[{"id": "shipped", "vector": [9, 9, 9, 9]}])
        repos.append(repo)
    args = ["--records", "off", "--points", url, "--points-follow-ms", "100"]
    writer = KilnServer(repos[0], args)
    follower = KilnServer(repos[1], args + ["--model-control", "poll", "--poll-interval-secs", "0.1"])
    rng = np.random.default_rng(7)
    try:
        for start, n in ((0, 3000), (3000, 2047), (5047, 4096), (9143, 1)):
            vectors = rng.normal(size=(n, 4)).astype(np.float32)
            upsert(writer, "items", [{"id": f"p{start + i:05d}", "vector": v.tolist(), "payload": {"i": start + i}}
                                    for i, v in enumerate(vectors)])
        total = 9144 + 1  # and the folder's point
        assert requests.get(f"http://{writer.url}/v1/collections/items", timeout=10).json()["count"] == total
        # A follower applies what another process committed.
        wait_for_count(follower, "items", total)
        # A reload (config.toml changed, poll mode) builds the collection again from the folder and
        # the store.
        config = repos[1] / "items" / "config.toml"
        config.write_text(config.read_text().replace("exact = true", "exact = true\nk = 7"))
        wait_for_builds(follower, 2)
        wait_for_count(follower, "items", total)
        hit = search(follower, "items", vector=[9, 9, 9, 9], k=1)["results"][0]
        assert hit["id"] == "shipped"
    finally:
        assert follower.stop() == 0
        assert writer.stop() == 0
    # At start.
    again = KilnServer(repos[0], args)
    try:
        info = requests.get(f"http://{again.url}/v1/collections/items", timeout=10).json()
        assert info["count"] == total, info
        assert search(again, "items", vector=[9, 9, 9, 9], k=1)["results"][0]["id"] == "shipped"
    finally:
        assert again.stop() == 0


@pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM)
def test_text_points_and_queries_through_the_embedder(tmp_path):
    repo = tmp_path / "models"
    add_minilm(repo)
    collection(repo, "faq", 384, "cosine", exact=True, extra='embedder = "all-minilm-l6-v2"\n', points=[
        {"id": "refund", "text": "How do I get my money back for an order?", "payload": {"topic": "billing"}},
        {"id": "password", "text": "I forgot my password and cannot log in.", "payload": {"topic": "account"}},
        {"id": "shipping", "text": "When will my parcel be delivered?", "payload": {"topic": "orders"}}])
    s = KilnServer(repo, ["--records", "off", "--points", "off"])
    try:
        assert search(s, "faq", text="reset my login credentials", k=1)["results"][0]["id"] == "password"
        upsert(s, "faq", [{"id": "invoice", "text": "Where can I download an invoice?", "payload": {"topic": "billing"}}])
        hits = search(s, "faq", text="I need a copy of my bill", k=2, filter={"topic": "billing"})["results"]
        assert [h["id"] for h in hits][0] == "invoice"
        client = httpclient.InferenceServerClient(url=s.url)
        t = httpclient.InferInput("text", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"my package has not arrived"], dtype=object))
        assert client.infer("faq", [t]).as_numpy("ids")[0][0].decode() == "shipping"
    finally:
        assert s.stop() == 0


def test_a_pipeline_named_before_its_collection_loads_after_it(tmp_path):
    """Load order comes from the dependency graph, not from names: `aa_search` searches
    `zz_items`, which sorts after it."""
    repo = tmp_path / "models"
    collection(repo, "zz_items", 3, "l2", exact=True, points=[
        {"id": "near", "vector": [1, 0, 0]}, {"id": "far", "vector": [9, 9, 9]}])
    (repo / "aa_search").mkdir()
    (repo / "aa_search" / "pipeline.toml").write_text(
        '[[inputs]]\nname = "q"\ndatatype = "FP32"\nshape = [-1, 3]\n\n'
        '[[steps]]\nname = "candidates"\nmodel = "zz_items"\ninputs = { query = "q" }\n\n'
        '[[outputs]]\nname = "ids"\nfrom = "candidates.ids"\n')
    s = KilnServer(repo, ["--records", "off", "--points", "off"])
    try:
        assert requests.get(f"http://{s.url}/v2/models/aa_search/ready", timeout=5).status_code == 200
        r = requests.post(f"http://{s.url}/v2/models/aa_search/infer", timeout=10, json={
            "inputs": [{"name": "q", "shape": [1, 3], "datatype": "FP32", "data": [1.1, 0, 0]}]})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"][0] == "near"
    finally:
        assert s.stop() == 0


def test_a_reloaded_collection_without_a_points_store_comes_back(tmp_path):
    repo = tmp_path / "models"
    collection(repo, "notes", 3, "l2", exact=True, points=[{"id": "a", "vector": [1, 0, 0]}])
    s = KilnServer(repo, ["--records", "off", "--points", "off", "--model-control", "poll", "--poll-interval-secs", "0.1"])
    try:
        upsert(s, "notes", [{"id": "b", "vector": [0, 1, 0]}])
        config = repo / "notes" / "config.toml"
        config.write_text(config.read_text() + "max_k = 50\n")
        wait_for_builds(s, 2)
        # Memory only: the rebuilt collection holds its folder's points, and answers.
        assert requests.get(f"http://{s.url}/v2/models/notes/ready", timeout=5).status_code == 200
        assert [h["id"] for h in search(s, "notes", vector=[1, 0, 0], k=5)["results"]] == ["a"]
    finally:
        assert s.stop() == 0


@pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM)
def test_reloading_an_embedder_rebuilds_the_collection_and_the_pipeline_that_use_it(tmp_path):
    repo = tmp_path / "models"
    add_minilm(repo)
    shutil.copytree(ROOT / "examples" / "models" / "help_center", repo / "help_center")
    (repo / "ask").mkdir()
    (repo / "ask" / "pipeline.toml").write_text(
        '[[inputs]]\nname = "question"\ndatatype = "BYTES"\nshape = [-1]\n\n'
        '[[steps]]\nname = "search"\nmodel = "help_center"\ninputs = { text = "question" }\n\n'
        '[[outputs]]\nname = "ids"\nfrom = "search.ids"\n')
    s = KilnServer(repo, ["--records", "off", "--points", "off", "--model-control", "explicit", "--load-model", "*"])
    body = {"inputs": [{"name": "question", "shape": [1], "datatype": "BYTES", "data": ["I lost my card"]}]}
    try:
        first = requests.post(f"http://{s.url}/v2/models/ask/infer", json=body, timeout=30).json()["outputs"][0]["data"]
        assert first[0] == "card-lost"
        config = repo / "all-minilm-l6-v2" / "config.toml"
        config.write_text(config.read_text().replace("max_length = 256", "max_length = 128"))
        assert requests.post(f"http://{s.url}/v2/repository/models/all-minilm-l6-v2/load", timeout=60).status_code == 200
        rebuilt = [json.loads(line)["model"] for line in s.logs().splitlines()
                   if "rebuilding: a model it calls changed" in line]
        assert rebuilt == ["help_center", "ask"], rebuilt  # the collection first, then its pipeline
        assert s.logs().count('"collection ready"') == 2
        for name in ("help_center", "ask"):
            assert requests.get(f"http://{s.url}/v2/models/{name}/ready", timeout=5).status_code == 200
        again = requests.post(f"http://{s.url}/v2/models/ask/infer", json=body, timeout=30).json()["outputs"][0]["data"]
        assert again == first
    finally:
        assert s.stop() == 0

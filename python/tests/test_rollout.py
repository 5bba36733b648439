"""`[rollout]` in config.toml: a canary answers its share of a model's requests; a shadow gets a
copy of each request off the caller's path — never delaying, failing or answering it — and its
answers are compared with the caller's (GET /v1/models/{m}/rollout). Real models over a real
socket: a fast `y = c·x³` and the slow model of bench/make_slow_model.py, which computes the
same function with two 384×384 matrix products."""

import sys
import time

import numpy as np
import pytest
import requests
from onnx import TensorProto, helper

from conftest import ROOT, KilnServer

sys.path.insert(0, str(ROOT / "bench"))
from make_slow_model import slow_model  # noqa: E402

SIZE = 384


def cube_model(factor=1.0):
    """y = factor · SIZE² · x³: what the slow model computes, in three multiplications."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [factor * SIZE * SIZE])
    nodes = [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"]),
             helper.make_node("Mul", ["x3", "c"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "cube", [x], [y], [c]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def threshold_classifier(threshold):
    """label = 1 when x > threshold, else 0 (INT64, one per row): a classifier whose versions
    differ only in the threshold."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])
    t = helper.make_tensor("t", TensorProto.FLOAT, [1], [threshold])
    shape = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    nodes = [helper.make_node("Greater", ["x", "t"], ["above"]),
             helper.make_node("Cast", ["above"], ["as_int"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["as_int", "flat"], ["label"])]
    model = helper.make_model(helper.make_graph(nodes, "threshold", [x], [label], [t, shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def folder(repo, name, versions, config):
    for v, data in versions.items():
        (repo / name / str(v)).mkdir(parents=True)
        (repo / name / str(v) / "model.onnx").write_bytes(data)
    (repo / name / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("rollout") / "models"
    fast, slow = cube_model(), slow_model(SIZE)
    folder(repo, "split", {1: fast, 2: cube_model(2.0)}, "[rollout]\ncanary = { version = 2, percent = 10 }\n")
    # float32 matrix products of 384 terms and a mean of 147,456 differ from x·x·x by ~1e-3.
    folder(repo, "shadowed", {1: fast, 2: slow}, "[rollout]\nshadow = 2\ntolerance = 0.01\n")
    folder(repo, "wrong", {1: cube_model(2.0), 2: slow}, "[rollout]\nshadow = 2\ntolerance = 0.01\n")
    folder(repo, "missing", {1: fast}, "[rollout]\nshadow = 7\n")
    folder(repo, "graded", {1: threshold_classifier(0.5), 2: threshold_classifier(0.3)},
           "[rollout]\ncanary = { version = 2, percent = 50 }\n")
    folder(repo, "graded_shadow", {1: threshold_classifier(0.5), 2: threshold_classifier(0.3)},
           "[rollout]\nshadow = 2\n")
    s = KilnServer(repo)
    yield s
    assert s.stop() == 0


def infer(session, server, model, value=0.5):
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
    r = session.post(f"http://{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def give_feedback(session, server, prefix, xs):
    """The truth (x > 0.5) of request `{prefix}-{i}` for each x, by the request's own id (the
    client key), once its row is logged."""
    for i, x in enumerate(xs):
        deadline = time.time() + 10
        while True:
            r = session.post(f"http://{server.url}/v1/feedback", json={"key": f"{prefix}-{i}", "label": int(x > 0.5)},
                             timeout=10)
            assert r.status_code == 201, r.text
            if r.json()["matched"] or time.time() > deadline:
                break
            time.sleep(0.05)
        assert r.json()["matched"], r.text


def rollout(server, model):
    r = requests.get(f"http://{server.url}/v1/models/{model}/rollout", timeout=10)
    return r.status_code, r.json()


def test_a_canary_answers_its_share(server):
    session = requests.Session()
    versions = [infer(session, server, "split")["model_version"] for _ in range(2000)]
    share = versions.count("2") / len(versions)
    assert 0.07 <= share <= 0.13, share
    status, body = rollout(server, "split")
    assert status == 200, body
    assert body["canary"] == {"version": 2, "percent": 10.0}
    roles = {v["version"]: v for v in body["versions"]}
    assert roles[1]["role"] == "primary" and roles[2]["role"] == "canary"
    assert roles[1]["requests"] + roles[2]["requests"] == 2000
    # A version named explicitly is that version, rollout or not.
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}
    for _ in range(50):
        r = session.post(f"http://{server.url}/v2/models/split/versions/1/infer", json=body, timeout=30)
        assert r.json()["model_version"] == "1"


def test_a_slow_shadow_never_reaches_the_caller_and_its_answers_are_compared(server):
    session = requests.Session()
    latencies = []
    for i in range(200):
        started = time.perf_counter()
        answer = infer(session, server, "shadowed", value=0.1 + i / 1000)
        latencies.append(time.perf_counter() - started)
        assert answer["model_version"] == "1"
    deadline = time.time() + 30
    while time.time() < deadline:
        _, body = rollout(server, "shadowed")
        c = body["shadow_comparison"]
        if c["agreed"] + c["disagreed"] + c["failed"] == c["sent"]:
            break
        time.sleep(0.2)
    assert c["sent"] + c["dropped"] == 200, c
    assert c["agreed"] == c["sent"] >= 1 and c["disagreed"] == 0 and c["failed"] == 0, c
    assert c["agreement"] == 1.0
    roles = {v["version"]: v for v in body["versions"]}
    assert roles[2]["role"] == "shadow" and roles[2]["requests"] == c["sent"]
    # The caller's p99 stays below the shadow's own median.
    p99 = float(np.percentile(latencies, 99)) * 1000
    assert p99 < roles[2]["latency_ms"]["p50"], (p99, roles[2]["latency_ms"])


def test_disagreement_is_counted(server):
    session = requests.Session()
    for i in range(20):
        infer(session, server, "wrong", value=0.2 + i / 100)
        time.sleep(0.05)
    deadline = time.time() + 30
    while time.time() < deadline:
        _, body = rollout(server, "wrong")
        c = body["shadow_comparison"]
        if c["sent"] and c["disagreed"] + c["agreed"] == c["sent"]:
            break
        time.sleep(0.2)
    assert c["disagreed"] == c["sent"] >= 1 and c["agreed"] == 0, c


def test_a_rollout_naming_a_missing_version_is_a_load_error(server):
    r = requests.post(f"http://{server.url}/v2/repository/index", json={}, timeout=10)
    entry = next(m for m in r.json() if m["name"] == "missing")
    assert entry["state"] != "READY" and "[rollout] names version 7" in entry.get("reason", ""), entry
    status, body = rollout(server, "split")
    assert status == 200
    r = requests.get(f"http://{server.url}/v1/models/shadowed/rollout", timeout=10)
    assert r.status_code == 200


def test_kiln_replay_compares_logged_requests_with_a_candidate_version(server):
    """`kiln replay` on what the canary test logged: requests the canary (version 2) answered
    agree with version 2; those version 1 answered (half of version 2's output) do not."""
    import json
    import subprocess

    from conftest import kiln_bin

    repo = server.log_path.parent / "models"
    time.sleep(1.0)  # the log writes asynchronously
    out = subprocess.run([kiln_bin(), "replay", str(repo), "split", "--version", "2", "--since", "1h", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_version = {int(k): v for k, v in report["logged_versions"].items()}
    assert by_version[1] >= 1000 and by_version[2] >= 100, report
    assert report["agreed"] == by_version[2] and report["disagreed"] == by_version[1], report
    assert report["failed"] == 0 and report["skipped"] == 0
    bad = subprocess.run([kiln_bin(), "replay", str(repo), "split", "--version", "9"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "version 9" in bad.stderr


def test_each_versions_accuracy_comes_from_the_log_once_feedback_arrives(server):
    """The truth is x > 0.5: version 1 is always right, the canary (threshold 0.3) is wrong
    exactly for its requests with x in (0.3, 0.5]."""
    session = requests.Session()
    xs = np.random.default_rng(7).random(200).astype(np.float32)
    answered = {}
    for i, x in enumerate(xs):
        body = {"id": f"g-{i}", "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [float(x)]}]}
        r = session.post(f"http://{server.url}/v2/models/graded/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        answered[i] = int(r.json()["model_version"])
    status, body = rollout(server, "graded")
    assert status == 200, body
    assert body["quality_window_s"] == 3600
    give_feedback(session, server, "g", xs)
    expected = {}
    for version in (1, 2):
        mine = [x for i, x in enumerate(xs) if answered[i] == version]
        right = sum(1 for x in mine if (x > 0.5) == (x > (0.5 if version == 1 else 0.3)))
        expected[version] = (len(mine), right / len(mine))
    assert expected[1][1] == 1.0 and expected[2][1] < 1.0, expected
    status, body = rollout(server, "graded")
    quality = {v["version"]: v["quality"] for v in body["versions"]}
    for version, (n, accuracy) in expected.items():
        assert quality[version]["logged_requests"] == n, quality
        assert quality[version]["labeled_rows"] == n, quality
        assert quality[version]["accuracy"] == pytest.approx(accuracy), (version, quality)
    assert requests.get(f"http://{server.url}/v1/models/graded/rollout?window=0", timeout=10).status_code == 400
    assert requests.get(f"http://{server.url}/v1/models/graded/rollout?windw=60", timeout=10).status_code == 400


def test_a_shadows_accuracy_comes_from_its_logged_answers_once_feedback_arrives(server):
    check_shadow_accuracy(server)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):
    from test_records import Postgres

    pg = Postgres()
    try:
        repo = tmp_path_factory.mktemp("rollout_pg") / "models"
        folder(repo, "graded_shadow", {1: threshold_classifier(0.5), 2: threshold_classifier(0.3)},
               "[rollout]\nshadow = 2\n")
        s = KilnServer(repo, extra_args=["--records", pg.new_database()])
        yield s
        assert s.stop() == 0
    finally:
        pg.stop()
        pg.remove()


def test_a_shadows_accuracy_from_a_postgresql_log(postgres_server):
    check_shadow_accuracy(postgres_server)


def check_shadow_accuracy(server):
    """The truth is x > 0.5: version 1 answers and is always right; the shadow (threshold 0.3)
    would have been wrong exactly for x in (0.3, 0.5]. Its answers are logged apart: the
    prediction listing holds only what callers got."""
    session = requests.Session()
    xs = np.random.default_rng(11).random(120).astype(np.float32)
    for i, x in enumerate(xs):
        body = {"id": f"sh-{i}", "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [float(x)]}]}
        r = session.post(f"http://{server.url}/v2/models/graded_shadow/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
    give_feedback(session, server, "sh", xs)
    # The copies run off the callers' path: wait until every one was compared and logged.
    deadline = time.time() + 15
    while True:
        status, body = rollout(server, "graded_shadow")
        assert status == 200, body
        quality = {v["version"]: v["quality"] for v in body["versions"]}
        sent = body["shadow_comparison"]["sent"]
        if quality[2]["logged_requests"] == sent and body["shadow_comparison"]["agreed"] + body["shadow_comparison"]["disagreed"] == sent:
            break
        assert time.time() < deadline, body
        time.sleep(0.1)
    assert sent == len(xs), body  # sequential requests: no copy was dropped
    right = sum(1 for x in xs if (x > 0.5) == (x > 0.3))
    assert right < len(xs)
    assert quality[1] == {"logged_requests": len(xs), "labeled_rows": len(xs), "accuracy": 1.0}, quality
    assert quality[2]["labeled_rows"] == len(xs), quality
    assert quality[2]["accuracy"] == pytest.approx(right / len(xs)), quality
    assert body["shadow_comparison"]["disagreed"] == len(xs) - right, body
    listed = requests.get(f"http://{server.url}/v1/predictions", params={"model": "graded_shadow", "limit": 1000},
                          timeout=10).json()["predictions"]
    assert len(listed) == len(xs) and {p["version"] for p in listed} == {1}, listed[:3]

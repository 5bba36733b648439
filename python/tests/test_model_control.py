"""Live model management against the real binary: poll-mode reloads and explicit
load/unload while a client keeps sending requests, and corrupt models arriving at runtime."""

import os
import shutil
import threading
import time

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from conftest import ROOT, KilnServer


def scale_model(factor):
    """y = x * factor, x: FP32 [batch, 4]. Outputs tell versions apart."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [float(factor)])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_version(repo, name, version, data, chunks=1, pause=0.0):
    """Writes REPO/name/version/model.onnx, optionally in pieces (a slow, non-atomic copy)."""
    path = repo / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "model.onnx", "wb") as f:
        step = max(1, len(data) // chunks)
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


class Load:
    """Keeps sending requests from a few threads and counts failures."""

    def __init__(self, url, model, make_input, threads=3):
        self.url, self.model, self.make_input = url, model, make_input
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.outputs = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self):
        client = httpclient.InferenceServerClient(url=self.url)
        while not self.stop.is_set():
            try:
                result = client.infer(self.model, [self.make_input()])
                with self.lock:
                    self.ok += 1
                    self.outputs.append(result)
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.failures.append(repr(e))
        client.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def scale_input():
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    return inp


def scale_factor(client):
    result = client.infer("scale", [scale_input()])
    return float(result.as_numpy("y")[0, 0]), result.get_response()["model_version"]


def wait_for(predicate, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def poll_server(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    write_version(repo, "scale", 1, scale_model(1))
    server = KilnServer(repo, ["--model-control", "poll", "--poll-interval-secs", "0.1"])
    yield server, repo
    assert server.stop() == 0


def test_poll_mode_reloads_under_load_without_a_failed_request(poll_server):
    server, repo = poll_server
    client = httpclient.InferenceServerClient(url=server.url)
    assert scale_factor(client) == (1.0, "1")
    with Load(server.url, "scale", scale_input) as load:
        for version in range(2, 7):
            # A slow copy: the poller sees partial files on the way.
            write_version(repo, "scale", version, scale_model(version), chunks=4, pause=0.06)
            assert wait_for(lambda: scale_factor(client) == (float(version), str(version))), server.logs()
        # A corrupt new version: the last good one keeps serving, the index says why.
        write_version(repo, "scale", 7, b"\x08\x07garbage" * 10)
        assert wait_for(lambda: any(r.get("version") == "7" and r["state"] == "UNAVAILABLE"
                                    for r in client.get_model_repository_index()))
        assert scale_factor(client) == (6.0, "6")
        # Fix it in place: it is picked up.
        write_version(repo, "scale", 7, scale_model(7))
        assert wait_for(lambda: scale_factor(client) == (7.0, "7")), server.logs()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50
    factors = {float(r.as_numpy("y")[0, 0]) for r in load.outputs}
    assert {1.0, 7.0} <= factors


def test_poll_mode_new_removed_and_corrupt_models(poll_server):
    server, repo = poll_server
    client = httpclient.InferenceServerClient(url=server.url)
    fraud_row = np.zeros((1, 30), dtype=np.float32)

    def fraud_input():
        inp = httpclient.InferInput("input", [1, 30], "FP32")
        inp.set_data_from_numpy(fraud_row)
        return inp

    with Load(server.url, "fraud", fraud_input) as load:
        (repo / "junk" / "1").mkdir(parents=True)
        (repo / "junk" / "1" / "model.onnx").write_bytes(b"not a model")
        def junk():
            return [r for r in client.get_model_repository_index() if r["name"] == "junk"]

        assert wait_for(lambda: junk() and "cannot load model" in junk()[0].get("reason", ""))
        assert junk()[0]["state"] == "UNAVAILABLE"
        assert not client.is_model_ready("junk")

        shutil.copytree(ROOT / "examples" / "models" / "iris", repo / "iris")
        assert wait_for(lambda: client.is_model_ready("iris"))
        shutil.rmtree(repo / "iris")
        assert wait_for(lambda: not client.is_model_ready("iris"))

        # A config.toml with a typo on a serving model: it keeps serving, the index says why.
        (repo / "fraud" / "config.toml").write_text("instancez = 2\n")
        assert wait_for(lambda: "unknown field" in str(client.get_model_repository_index()))
        assert client.is_model_ready("fraud")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 20


def test_explicit_mode_load_unload_under_load(tmp_path, fixture):
    repo = tmp_path / "models"
    repo.mkdir()
    for name in ("fraud", "iris", "digits_mlp"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    write_version(repo, "scale", 1, scale_model(1))
    server = KilnServer(repo, ["--model-control", "explicit", "--load-model", "fraud,scale"])
    try:
        client = httpclient.InferenceServerClient(url=server.url)
        assert client.is_model_ready("fraud")
        assert not client.is_model_ready("iris")
        index = {r["name"]: r for r in client.get_model_repository_index()}
        assert index["iris"]["reason"] == "not loaded"
        x = np.asarray(fixture("fraud")["inputs"][:4], dtype=np.float32)

        def fraud_input():
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return inp

        with Load(server.url, "fraud", fraud_input) as fraud_load, Load(server.url, "scale", scale_input) as scale_load:
            for i in range(22):
                # Another model comes and goes...
                client.load_model("iris")
                assert client.is_model_ready("iris")
                client.unload_model("iris")
                assert not client.is_model_ready("iris")
                # ...and a busy one is replaced by a changed file each round.
                write_version(repo, "scale", 1, scale_model(i + 2))
                client.load_model("scale")
                assert scale_factor(client)[0] == float(i + 2)
                client.load_model("fraud")  # unchanged: the serving copy is kept
        assert fraud_load.failures == [], fraud_load.failures[:5]
        assert scale_load.failures == [], scale_load.failures[:5]
        assert fraud_load.ok > 20 and scale_load.ok > 20
        labels = {tuple(r.as_numpy("label").tolist()) for r in fraud_load.outputs}
        assert labels == {tuple(fixture("fraud")["labels"][:4])}

        with pytest.raises(Exception) as err:
            client.load_model("no_such_model")
        assert "no such folder" in str(err.value)
    finally:
        assert server.stop() == 0

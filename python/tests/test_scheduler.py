"""Dynamic batching, admission control (queue full, timeouts) and Prometheus metrics,
against the real binary."""

import re
import shutil
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, KilnServer, metric

sys.path.insert(0, str(ROOT / "bench"))
from make_slow_model import slow_model  # noqa: E402  (one definition, shared with the benchmarks)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("sched") / "models"
    repo.mkdir()
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud_batched")
    (repo / "fraud_batched" / "config.toml").write_text(
        "instances = 1\nmax_batch_size = 64\nmax_queue_delay_us = 3000\n"
    )
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud_two")
    (repo / "fraud_two" / "config.toml").write_text(
        "instances = 2\nmax_batch_size = 64\nmax_queue_delay_us = 2000\n"
    )
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "1" / "model.onnx").write_bytes(slow_model(768))
    (repo / "slow" / "config.toml").write_text("instances = 1\nmax_queue_size = 2\n")
    (repo / "slow_timeout" / "1").mkdir(parents=True)
    # ~8x the work of `slow` (tens of ms): far beyond the timeouts below, whatever the
    # timer granularity (tokio's is 1 ms) and the machine.
    (repo / "slow_timeout" / "1" / "model.onnx").write_bytes(slow_model(768))
    (repo / "slow_big" / "1").mkdir(parents=True)
    (repo / "slow_big" / "1" / "model.onnx").write_bytes(slow_model(768))
    (repo / "slow_timeout" / "config.toml").write_text("instances = 1\nrequest_timeout_ms = 1\n")
    s = KilnServer(repo)
    yield s
    assert s.stop() == 0


def stats(client, model):
    return client.get_inference_statistics(model)["model_stats"][0]


def infer_fraud(url, model, x, outputs=None):
    """One request of `x`'s rows on its own connection (as concurrent callers are)."""
    c = httpclient.InferenceServerClient(url=url)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return c.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None)
    finally:
        c.close()


def test_concurrent_requests_are_batched_and_get_exactly_their_rows(server, fixture):
    fx = fixture("fraud")
    x_all = np.asarray(fx["inputs"], dtype=np.float32)
    client = httpclient.InferenceServerClient(url=server.url)
    before = stats(client, "fraud_batched")

    def one(i):
        rows = 1 + i % 4
        start = (i * 3) % (len(x_all) - rows)
        r = infer_fraud(server.url, "fraud_batched", x_all[start : start + rows])
        return start, rows, r.as_numpy("label"), r.as_numpy("probabilities")

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(96)))
    for start, rows, labels, proba in results:
        assert labels.shape == (rows,)
        assert labels.tolist() == fx["labels"][start : start + rows]
        np.testing.assert_allclose(proba, np.asarray(fx["probabilities"][start : start + rows]), atol=1e-5)
    after = stats(client, "fraud_batched")
    sent_rows = sum(rows for _, rows, _, _ in results)
    requests = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"].get("count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    inferred = int(after["inference_count"]) - int(before.get("inference_count", 0))
    assert requests == 96
    assert inferred == sent_rows
    assert executions < requests, f"{executions} executions for {requests} requests: nothing was batched"


def test_two_instances_sharing_a_queue_give_every_caller_its_rows_and_outputs(server, fixture):
    """Callers asking for different outputs cannot share a batch: each waits in the shared
    queue, in order, for whichever instance is free, and still gets exactly its rows."""
    fx = fixture("fraud")
    x_all = np.asarray(fx["inputs"], dtype=np.float32)
    wanted = [None, ["label"], ["probabilities"]]

    def one(i):
        rows = 1 + i % 5
        start = (i * 7) % (len(x_all) - rows)
        names = wanted[i % 3]
        r = infer_fraud(server.url, "fraud_two", x_all[start : start + rows], names)
        got = {o["name"] for o in r.get_response()["outputs"]}
        return start, rows, names, got, r

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(120)))
    for start, rows, names, got, r in results:
        assert got == set(names or ["label", "probabilities"])
        if "label" in got:
            assert r.as_numpy("label").tolist() == fx["labels"][start : start + rows]
        if "probabilities" in got:
            np.testing.assert_allclose(
                r.as_numpy("probabilities"), np.asarray(fx["probabilities"][start : start + rows]), atol=1e-5
            )
    client = httpclient.InferenceServerClient(url=server.url)
    after = stats(client, "fraud_two")
    assert int(after["inference_stats"]["success"]["count"]) == 120
    assert int(after["inference_count"]) == sum(rows for _, rows, _, _, _ in results)


def test_a_full_queue_answers_429_at_once_and_the_server_keeps_serving(server):
    def call(_):
        c = httpclient.InferenceServerClient(url=server.url)
        inp = httpclient.InferInput("x", [1, 1], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        try:
            c.infer("slow", [inp])
            return "ok"
        except InferenceServerException as e:
            return (e.status(), e.message())
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(16)))
    refused = [r for r in results if r != "ok"]
    assert results.count("ok") >= 3  # one running, two queued
    assert refused, "16 concurrent requests on a queue of 2 should overflow"
    for status, message in refused:
        assert status == "429"
        assert "has 2 requests waiting (max_queue_size)" in message
    assert call(0) == "ok"


def test_timeouts_answer_504(server):
    client = httpclient.InferenceServerClient(url=server.url)
    inp = httpclient.InferInput("x", [1, 1], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow_timeout", [inp])  # config: request_timeout_ms = 1
    assert err.value.status() == "504"
    assert "did not answer within the request timeout of 1000 µs" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow_big", [inp], timeout=1000)  # tritonclient sends it as the "timeout" parameter (µs)
    assert err.value.status() == "504"
    assert client.infer("slow", [inp]).as_numpy("y").shape == (1, 1)


def scrape(url):
    with urllib.request.urlopen(url) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def test_metrics_are_consistent_with_requests_sent(server, fixture):
    client = httpclient.InferenceServerClient(url=server.url)
    before = scrape(f"http://{server.url}/metrics")
    fx = np.asarray(fixture("fraud")["inputs"][:2], dtype=np.float32)
    for _ in range(7):
        inp = httpclient.InferInput("input", list(fx.shape), "FP32")
        inp.set_data_from_numpy(fx)
        client.infer("fraud_batched", [inp])
    bad = httpclient.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("fraud_batched", [bad])
    after = scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")  # the separate port
    labels = dict(model="fraud_batched", version="1", protocol="rest")
    delta = lambda name, **kw: metric(after, name, **kw) - metric(before, name, **kw)
    assert delta("kiln_requests_total", outcome="success", **labels) == 7
    assert delta("kiln_requests_total", outcome="invalid", **labels) == 1
    assert delta("kiln_request_duration_seconds_count", **labels) == 7
    assert delta("kiln_request_duration_seconds_bucket", le="+Inf", **labels) == 7
    assert delta("kiln_batch_size_sum", model="fraud_batched") == 14
    # One request at a time: each queued, run and answered alone (nothing to merge or split).
    for phase in ("queue", "compute", "reply"):
        assert delta("kiln_request_phase_seconds_count", model="fraud_batched", phase=phase) == 7, phase
    for phase in ("merge", "split"):
        assert delta("kiln_request_phase_seconds_count", model="fraud_batched", phase=phase) == 0, phase
    assert "kiln_queue_depth{" in after and "kiln_requests_in_flight{" in after
    assert re.search(r"^process_resident_memory_bytes \d+", after, re.M)

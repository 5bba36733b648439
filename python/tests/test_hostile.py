"""The hostile sweep, kept as a test: each request that once broke kiln (lost data, stalled the
server, answered 500 or 200 where it should refuse) and the status it must get now, against the
real binary over real sockets. docs/fuzzing.md lists them; `pytest python/tests/test_hostile.py`
re-runs the sweep. (Lost points on restart: test_collections.py; feedback that erased labels:
test_records.py.)"""

import json
import shutil
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import ROOT, KilnServer, link_gguf


def url(server, path):
    return f"http://{server.url}{path}"


def small_repository(tmp_path, *models, llm=False):
    repo = tmp_path / "models"
    for name in models:
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name,
                        ignore=lambda d, names: [n for n in names if n.endswith(".gguf")])
    if llm:
        link_gguf(repo / "smollm2" / "1" / "model.gguf")
    return repo


# --- 2. One chat request must not take the server down -------------------------------------

def test_a_chat_that_cannot_fit_is_refused_before_rendering_and_probes_stay_fast(kiln):
    many = {"model": "smollm2", "max_tokens": 1,
            "messages": [{"role": "user", "content": f"w{i}"} for i in range(100_000)]}
    huge = {"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "a" * (20 << 20)}]}
    answers = {}

    def send(name, body):
        answers[name] = requests.post(url(kiln, "/v1/chat/completions"), json=body, timeout=120)

    threads = [threading.Thread(target=send, args=(f"many{i}", many)) for i in range(2)]
    threads.append(threading.Thread(target=send, args=("huge", huge)))
    for t in threads:
        t.start()
    # While they are in flight, liveness answers (it shares the executor the render once blocked).
    for _ in range(5):
        assert requests.get(url(kiln, "/v2/health/live"), timeout=5).status_code == 200
    for t in threads:
        t.join()
    for name in ("many0", "many1"):
        r = answers[name]
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "messages"
        assert error["message"] == "100000 messages cannot fit the model's context of 1024 tokens"
    r = answers["huge"]
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "messages[0]: 'content' is 20971520 bytes; the limit is 1048576 (--max-string-bytes)"
    r = requests.post(url(kiln, "/v1/completions"), json={"model": "smollm2", "prompt": "a" * (20 << 20)}, timeout=120)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    # Under the string limit but over what the context can hold: refused before tokenizing.
    r = requests.post(url(kiln, "/v1/completions"), json={"model": "smollm2", "prompt": "a" * 1_000_000}, timeout=120)
    assert r.status_code == 400, r.text
    assert "bytes of text; the model's context of 1024 tokens holds at most" in r.json()["error"]["message"]


def test_shutdown_deadline_holds_with_a_generation_running(tmp_path):
    server = KilnServer(small_repository(tmp_path, "smollm2", llm=True), ["--shutdown-timeout-secs", "1"])
    body = {"model": "smollm2", "stream": True, "max_tokens": 100_000, "temperature": 0.0,
            "messages": [{"role": "user", "content": "Count from one to ten thousand, in words."}]}
    stream = requests.post(url(server, "/v1/chat/completions"), json=body, stream=True, timeout=60)
    assert stream.status_code == 200
    lines = stream.iter_lines()  # kept: a collected iterator closes the connection
    next(lines)
    server.proc.send_signal(signal.SIGTERM)
    # The drain deadline (1 s) cuts the stream and the process exits (1: something was cut).
    assert server.proc.wait(timeout=20) == 1
    server.log.close()
    assert "the 1s drain deadline passed" in server.logs()


# --- 3. A stalled body or an idle connection does not hold a connection for ever -----------

def test_stalled_bodies_are_timed_out_and_free_their_connections(tmp_path):
    server = KilnServer(small_repository(tmp_path, "fraud"),
                        ["--max-connections", "8", "--body-timeout-secs", "1", "--header-timeout-secs", "30"])
    try:
        stalled = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            s.sendall(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12345")
            stalled.append(s)
        for s in stalled:
            answer = s.recv(4096).decode(errors="replace")
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "--body-timeout-secs" in answer
            s.close()
        assert requests.get(url(server, "/v2/health/ready"), timeout=5).status_code == 200
    finally:
        assert server.stop() == 0


def test_an_idle_connection_is_closed(tmp_path):
    server = KilnServer(small_repository(tmp_path, "fraud"),
                        ["--idle-timeout-secs", "1", "--header-timeout-secs", "30"])
    try:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.time()
        assert s.recv(4096) == b""  # closed by the server, not by the 15 s socket timeout
        assert time.time() - started < 14
        s.close()
    finally:
        assert server.stop() == 0


# --- 5. NUL bytes in BYTES inputs -----------------------------------------------------------

def test_a_nul_byte_in_text_is_a_400_naming_tensor_and_row(kiln):
    texts = ["my card was stolen", "pay\x00load"]
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": texts}]}
    for model in ("ticket_urgency", "support_triage"):
        r = requests.post(url(kiln, f"/v2/models/{model}/infer"), json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert "input 'text': row 1 (element 1) holds a NUL byte at byte 3" in r.json()["error"], r.text
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    http = httpclient.InferenceServerClient(url=kiln.url)
    x = httpclient.InferInput("text", [2, 1], "BYTES")
    x.set_data_from_numpy(data)  # the binary extension
    with pytest.raises(InferenceServerException, match=r"row 1 \(element 1\) holds a NUL byte") as e:
        http.infer("ticket_urgency", [x])
    assert "400" in str(e.value.status())
    g = grpcclient.InferenceServerClient(url=kiln.grpc_url)
    x = grpcclient.InferInput("text", [2, 1], "BYTES")
    x.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match=r"row 1 \(element 1\) holds a NUL byte") as e:
        g.infer("ticket_urgency", [x])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


# --- 6. A pipeline whose step is unloaded is not ready ---------------------------------------

def test_readiness_follows_dependencies_and_their_calls_are_503(tmp_path):
    repo = small_repository(tmp_path, "fraud", "fraud_lr", "fraud_ensemble")
    server = KilnServer(repo, ["--model-control", "explicit", "--load-model", "fraud,fraud_lr,fraud_ensemble"])
    try:
        body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]}
        assert requests.get(url(server, "/v2/models/fraud_ensemble/ready"), timeout=5).status_code == 200
        assert requests.post(url(server, "/v2/repository/models/fraud/unload"), timeout=30).status_code == 200
        r = requests.get(url(server, "/v2/models/fraud_ensemble/ready"), timeout=5)
        assert r.status_code == 503, r.text
        assert "it calls 'fraud'" in r.json()["error"], r.text
        r = requests.post(url(server, "/v2/models/fraud_ensemble/infer"), json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert "pipeline step 'gbc'" in r.json()["error"]
        index = {m["name"]: m for m in requests.post(url(server, "/v2/repository/index"), timeout=5).json()}
        assert index["fraud_ensemble"]["state"] == "UNAVAILABLE" and "it calls 'fraud'" in index["fraud_ensemble"]["reason"]
        assert grpcclient.InferenceServerClient(url=server.grpc_url).is_model_ready("fraud_ensemble") is False
        # A load request that asks for a config override is refused, not silently ignored.
        r = requests.post(url(server, "/v2/repository/models/fraud/load"), data=b"{not json", timeout=30)
        assert r.status_code == 400 and "malformed load request JSON" in r.json()["error"]
        r = requests.post(url(server, "/v2/repository/models/fraud/load"),
                          json={"parameters": {"config": json.dumps({"max_batch_size": 4})}}, timeout=30)
        assert r.status_code == 400 and "load parameter 'config' is not supported" in r.json()["error"], r.text
        assert requests.post(url(server, "/v2/repository/models/fraud/load"), timeout=60).status_code == 200
        assert requests.get(url(server, "/v2/models/fraud_ensemble/ready"), timeout=5).status_code == 200
        assert requests.post(url(server, "/v2/models/fraud_ensemble/infer"), json=body, timeout=30).status_code == 200
    finally:
        assert server.stop() == 0


# --- 7. Smaller ones: a precise 4xx each ------------------------------------------------------

def test_class_count_answers_top_classes_over_http_and_grpc(kiln, fixture):
    x = np.asarray(fixture("fraud")["inputs"][:3], dtype=np.float32)
    http = httpclient.InferenceServerClient(url=kiln.url)
    raw = http.infer("fraud", [input_of(httpclient, x)]).as_numpy("probabilities")
    expected = [[f"{raw[r, c]:.6f}:{c}:{['legit', 'fraud'][c]}".encode() for c in np.argsort(-raw[r], kind="stable")[:1]]
                for r in range(3)]
    for client, module in ((http, httpclient), (grpcclient.InferenceServerClient(url=kiln.grpc_url), grpcclient)):
        out = module.InferRequestedOutput("probabilities", class_count=1)
        got = client.infer("fraud", [input_of(module, x)], outputs=[out]).as_numpy("probabilities")
        assert got.shape == (3, 1)
        assert got.tolist() == expected


def input_of(module, x):
    i = module.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def post(server, path, body):
    return requests.post(url(server, path), json=body, timeout=60)


def test_smaller_refusals_are_precise(kiln):
    # 100 raw prompts to an LLM can never be admitted at once (8 slots + 64 queued).
    r = post(kiln, "/v2/models/smollm2/infer",
             {"inputs": [{"name": "text_input", "shape": [100], "datatype": "BYTES", "data": ["hi"] * 100}]})
    assert r.status_code == 400, r.text
    assert "'text_input' has 100 rows; model 'smollm2' generates at most 72 at once" in r.json()["error"]
    # A recursive schema: one line that says so.
    tree = {"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                               "required": ["kids"]}}, "$ref": "#/$defs/node"}
    r = post(kiln, "/v1/chat/completions", {"model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
                                            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": tree}}})
    if r.status_code == 400:
        message = r.json()["error"]["message"]
        assert "\n" not in message and len(message) < 500, message
        assert "recursive" in message, message
    else:  # llguidance enforced it: the answer must then follow the schema.
        assert r.status_code == 200, r.text
    # Out-of-range FP32 by position; ragged nested data.
    r = post(kiln, "/v2/models/fraud/infer",
             {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 29 + [1e39]}]})
    assert r.status_code == 400 and r.json()["error"] == "input 'input': element 29 (1e+39) is out of range for FP32"
    ragged = [[0.5] * 30, [0.5] * 29 + [[1.0]]]
    r = post(kiln, "/v2/models/fraud/infer", {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": ragged}]})
    assert r.status_code == 400 and "'data' is ragged" in r.json()["error"], r.text
    # A tool result that names no call.
    r = post(kiln, "/v1/chat/completions", {"model": "smollm2", "messages": [
        {"role": "user", "content": "weather?"}, {"role": "tool", "content": "-3 C"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert "'tool_call_id' is required" in r.json()["error"]["message"]
    # Quality of a model that does not exist.
    r = requests.get(url(kiln, "/v1/models/nope/quality"), timeout=10)
    assert r.status_code == 404, r.text
    # A point's payload is capped.
    r = requests.put(url(kiln, "/v1/collections/items/points"), timeout=30, json={"points": [
        {"id": "big", "vector": [0.1] * 16, "payload": {"blob": "x" * 100_000}}]})
    assert r.status_code == 413 and "--max-payload-bytes" in r.json()["error"], r.text


def test_grpc_contents_are_checked_field_by_field(kiln):
    channel = grpc.insecure_channel(kiln.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def request(**tensor):
        req = service_pb2.ModelInferRequest(model_name="fraud")
        t = req.inputs.add(name="input", datatype="FP32", shape=[1, 30])
        for field, values in tensor.items():
            getattr(t.contents, field).extend(values)
        return req

    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request(fp64_contents=[0.0] * 30), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "input 'input' is FP32: its values go in fp32_contents, but fp64_contents holds 30"
    both = request(fp32_contents=[0.0] * 30)
    both.raw_input_contents.append(np.zeros(30, dtype=np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(both, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has both raw_input_contents and typed contents (fp32_contents)" in e.value.details()
    assert stub.ModelInfer(request(fp32_contents=[0.0] * 30), timeout=10).outputs
    channel.close()

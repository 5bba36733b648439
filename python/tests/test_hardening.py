"""Hardening, over real sockets against the real `kiln serve`: TLS with a certificate this test
makes (REST with requests and tritonclient, gRPC with tritonclient), bearer-token auth with
inference/admin scopes on REST and gRPC, request and connection limits, hostile clients
(oversized headers, slowloris), model names that try to leave the repository (path traversal,
symlinks), and graceful shutdown under load: readiness goes false first, no accepted request is
lost, every answered request is in the prediction log, exit 0."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, KilnServer, make_repository

INFERENCE_TOKEN = "inference-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-fedcba9876543210fedcba"


def fraud_request(rows):
    return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}


def fraud_rows(fixture, n=4):
    return np.asarray(fixture("fraud")["inputs"][:n], dtype=np.float32)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# test clients\nfrontend inference {INFERENCE_TOKEN}\nops admin {ADMIN_TOKEN}\n")
    path.chmod(0o600)
    return path


def test_tls_serves_rest_and_grpc_with_the_callers_certificate(tmp_path, certificate, fixture):
    cert, key, ca = certificate
    server = KilnServer(make_repository(tmp_path), ["--tls-cert", str(cert), "--tls-key", str(key)], ca=ca)
    try:
        assert server.scheme == "https"
        rows = fraud_rows(fixture)
        expected = np.asarray(fixture("fraud")["probabilities"][:4], dtype=np.float32)
        # requests (urllib3 + Python's ssl) verifying against the test's certificate.
        r = requests.post(f"https://{server.url}/v2/models/fraud/infer", json=fraud_request(rows), verify=str(ca),
                          timeout=10)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        np.testing.assert_allclose(np.asarray(out["probabilities"]["data"]).reshape(4, 2), expected, atol=1e-5)
        # A client that does not trust the certificate is refused by its own TLS stack.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://{server.url}/v2/health/ready", timeout=10)
        # Plain HTTP on the TLS port gets no HTTP answer.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{server.url}/v2/health/ready", timeout=10)

        # tritonclient over HTTPS, binary tensors.
        client = httpclient.InferenceServerClient(url=server.url, ssl=True, ssl_options={"ca_certs": str(ca)})
        x = httpclient.InferInput("input", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows, binary_data=True)
        result = client.infer("fraud", [x])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        client.close()

        # tritonclient over gRPC with TLS (HTTP/2 negotiated by ALPN).
        grpc = grpcclient.InferenceServerClient(url=server.grpc_url, ssl=True, root_certificates=str(ca))
        assert grpc.is_server_ready()
        gx = grpcclient.InferInput("input", list(rows.shape), "FP32")
        gx.set_data_from_numpy(rows)
        np.testing.assert_allclose(grpc.infer("fraud", [gx]).as_numpy("probabilities"), expected, atol=1e-5)
        grpc.close()
    finally:
        assert server.stop() == 0


def test_tls_refuses_a_key_that_does_not_match(tmp_path, certificate):
    cert, _, _ = certificate
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(other)], check=True)
    result = subprocess.run([os.environ.get("KILN_BIN", str(ROOT / "target/debug/kiln")), "serve",
                             str(ROOT / "examples/models"), "--tls-cert", str(cert), "--tls-key", str(other),
                             "--records", "off"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "certificate and key do not work together" in result.stderr, result.stderr


def test_auth_scopes_on_rest(tmp_path, token_file, fixture):
    server = KilnServer(make_repository(tmp_path), ["--auth-token-file", str(token_file), "--log-level", "trace",
                                                   "--model-control", "explicit", "--load-model", "*"])
    base = f"http://{server.url}"
    body = fraud_request(fraud_rows(fixture, 1))

    def call(method, path, token=None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, base + path, headers=headers, timeout=30, **kw)

    try:
        # Probes need no token (the default --auth-public health).
        assert call("GET", "/v2/health/ready").status_code == 200
        assert call("GET", "/v2/health/live").status_code == 200
        assert call("GET", "/v2/models/fraud/ready").status_code == 200
        # No token, a wrong one, a malformed header: 401 with a Bearer challenge.
        r = call("POST", "/v2/models/fraud/infer", json=body)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in r.json()["error"]
        assert call("POST", "/v2/models/fraud/infer", "wrong-token-0123456789", json=body).status_code == 401
        r = requests.post(base + "/v2/models/fraud/infer", json=body, timeout=10,
                          headers={"Authorization": f"Basic {INFERENCE_TOKEN}"})
        assert r.status_code == 401
        # Unknown paths are not enumerable without a token.
        assert call("GET", "/v2/secret").status_code == 401
        # An inference token: inference and metadata, but not admin endpoints.
        assert call("POST", "/v2/models/fraud/infer", INFERENCE_TOKEN, json=body).status_code == 200
        assert call("GET", "/v2/models/fraud", INFERENCE_TOKEN).status_code == 200
        for method, path in [("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/fraud/unload"),
                             ("GET", "/v1/predictions"), ("POST", "/v1/feedback"),
                             ("GET", "/v1/models/fraud/quality"), ("GET", "/metrics")]:
            r = call(method, path, INFERENCE_TOKEN, json={})
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "no admin scope" in r.json()["error"] and "frontend" in r.json()["error"]
        # The admin token: everything.
        assert call("POST", "/v2/models/fraud/infer", ADMIN_TOKEN, json=body).status_code == 200
        assert call("POST", "/v2/repository/index", ADMIN_TOKEN).status_code == 200
        assert call("GET", "/v1/predictions?limit=1", ADMIN_TOKEN).status_code == 200
        assert call("GET", "/metrics", ADMIN_TOKEN).status_code == 200
        # The separate metrics port is guarded the same way.
        assert requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).status_code == 401
    finally:
        assert server.stop() == 0
    # Tokens never reach the log, even at trace level; token names may.
    logs = server.logs()
    assert INFERENCE_TOKEN not in logs and ADMIN_TOKEN not in logs


def test_auth_scopes_on_grpc(tmp_path, token_file, fixture):
    server = KilnServer(make_repository(tmp_path), ["--auth-token-file", str(token_file),
                                                   "--auth-public", "health,metrics"])
    try:
        rows = fraud_rows(fixture, 2)
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        x = grpcclient.InferInput("input", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        assert client.is_server_ready()  # health is public
        with pytest.raises(InferenceServerException) as refused:
            client.infer("fraud", [x])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as refused:
            client.infer("fraud", [x], headers={"authorization": "Bearer not-a-token-0123456789"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        inference = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
        result = client.infer("fraud", [x], headers=inference)
        assert result.as_numpy("probabilities").shape == (2, 2)
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index(headers=inference)
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        index = client.get_model_repository_index(headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, as_json=True)
        assert any(m["name"] == "fraud" for m in index["models"])
        # --auth-public metrics opens the metrics port.
        assert requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).status_code == 200
        client.close()
    finally:
        assert server.stop() == 0


def test_request_limits_answer_with_the_flag_to_raise(tmp_path, fixture):
    server = KilnServer(make_repository(tmp_path), ["--max-tensor-elements", "100", "--max-string-bytes", "16",
                                                   "--max-batch-rows", "3", "--max-body-bytes", "65536"])
    base = f"http://{server.url}"
    try:
        r = requests.post(f"{base}/v2/models/fraud/infer", json=fraud_request(fraud_rows(fixture, 4)), timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == "input 'input' has 120 elements; at most 100 are accepted (--max-tensor-elements)"
        text = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["x" * 17]}]}
        r = requests.post(f"{base}/v2/models/ticket_urgency/infer", json=text, timeout=10)
        assert r.status_code == 400 and "--max-string-bytes" in r.json()["error"], r.text
        many = {"inputs": [{"name": "text", "shape": [4, 1], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}
        r = requests.post(f"{base}/v2/models/ticket_urgency/infer", json=many, timeout=10)
        assert r.status_code == 400 and "4 rows" in r.json()["error"] and "--max-batch-rows" in r.json()["error"]
        r = requests.post(f"{base}/v2/models/fraud/infer", data=b" " * 70000, timeout=10)
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]
        # The same limits on gRPC.
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        x = grpcclient.InferInput("input", [4, 30], "FP32")
        x.set_data_from_numpy(fraud_rows(fixture, 4))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("fraud", [x])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "--max-tensor-elements" in refused.value.message()
        client.close()
        # Within the limits all is well.
        ok = requests.post(f"{base}/v2/models/fraud/infer", json=fraud_request(fraud_rows(fixture, 3)), timeout=10)
        assert ok.status_code == 200
    finally:
        assert server.stop() == 0


def test_hostile_requests_are_cut_and_the_server_stays_up(tmp_path):
    server = KilnServer(make_repository(tmp_path), ["--max-header-bytes", "8192", "--header-timeout-secs", "1"])
    host, port = "127.0.0.1", server.port
    try:
        # A request head larger than --max-header-bytes: 431.
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/v2/health/ready", headers={"X-Padding": "a" * 20000})
        assert conn.getresponse().status == 431
        conn.close()

        # Slowloris: half a request head, then silence; the server hangs up after the timeout.
        slow = socket.create_connection((host, port))
        slow.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
        slow.settimeout(10)
        started = time.monotonic()
        reply = slow.recv(4096)
        assert time.monotonic() - started < 9, "the half-sent request was not cut"
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
        slow.close()

        # A TLS-less garbage stream and a truncated body do not disturb anyone else.
        junk = socket.create_connection((host, port))
        junk.sendall(os.urandom(4096))
        junk.close()
        partial = socket.create_connection((host, port))
        partial.sendall(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inp")
        partial.close()
        assert requests.get(f"http://{server.url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path):
    server = KilnServer(make_repository(tmp_path), ["--max-connections", "4"])
    host, port = "127.0.0.1", server.port
    try:
        # Four idle keep-alive connections hold every slot; a fifth is closed at once (no
        # hanging), and a slot frees when one of the four leaves.
        held = []
        for _ in range(4):
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/v2/health/live")
            assert c.getresponse().read() == b""
            held.append(c)
        extra = socket.create_connection((host, port))
        extra.settimeout(10)
        try:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        extra.close()
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert requests.get(f"http://{server.url}/v2/health/live", timeout=5).status_code == 200
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "a freed connection slot was not reused"
                time.sleep(0.05)
        for c in held:
            c.close()
        metrics = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
        assert re.search(r'kiln_connections_rejected_total\{port="\d+"\} [1-9]', metrics), metrics[-2000:]
    finally:
        assert server.stop() == 0


def test_model_names_cannot_leave_the_repository(tmp_path):
    repo = make_repository(tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", outside / "fraud")
    os.symlink(outside / "fraud", repo / "escape")  # a model folder linking out: never served
    os.symlink(outside / "fraud" / "1" / "model.onnx", repo / "iris" / "1" / "elsewhere.onnx")
    (repo / "leak" / "1").mkdir(parents=True)
    os.symlink(outside / "fraud" / "1" / "model.onnx", repo / "leak" / "1" / "model.onnx")
    os.symlink(repo / "fraud", repo / "fraud_alias")  # a link inside the repository is fine
    # A text model whose [text] paths point out of the repository is refused like model.onnx.
    (repo / "text_escape").mkdir()
    (repo / "text_escape" / "config.toml").write_text(
        'kind = "text_embedding"\n[text]\nmodel = "../../outside/fraud/1/model.onnx"\n'
        'tokenizer = "../../outside/fraud/1/model.onnx"\n'
    )
    server = KilnServer(repo, ["--model-control", "explicit", "--load-model", "*"])
    base = f"http://{server.url}"
    try:
        index = {m["name"]: m for m in requests.post(f"{base}/v2/repository/index", timeout=10).json()}
        assert "escape" not in index
        assert index["leak"]["state"] == "UNAVAILABLE" and "outside the model repository" in index["leak"]["reason"]
        assert index["fraud_alias"]["state"] == "READY"
        escaped = index["text_escape"]
        assert escaped["state"] == "UNAVAILABLE" and "outside the model repository" in escaped["reason"], escaped

        for name in ["..", "../fraud", "../../etc", "..%2F..%2Fetc", ".hidden", "a/b", "escape"]:
            quoted = urllib.parse.quote(name, safe="")
            r = requests.post(f"{base}/v2/repository/models/{quoted}/load", timeout=10)
            assert r.status_code in (400, 404), (name, r.status_code, r.text)
            if name in (".hidden", "../fraud", "../../etc", "a/b", "..%2F..%2Fetc"):  # ".." alone: the client
                assert "invalid model name" in r.json()["error"], r.text  # normalises it away (404)
            r = requests.post(f"{base}/v2/repository/models/{quoted}/unload", timeout=10)
            assert r.status_code in (400, 404), (name, r.status_code, r.text)
        # Raw dot segments that a client does not normalise.
        for path in ["/v2/models/../../../etc/passwd/ready", "/v2/models/%2e%2e/ready", "/v2/models/..%2f..%2fetc/infer"]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # one each: a 4xx may close it
            conn.request("GET" if path.endswith("ready") else "POST", path, body=b"{}")
            response = conn.getresponse()
            response.read()
            assert response.status in (400, 404), (path, response.status)
            conn.close()
        # The index still holds no stray entries.
        names = {m["name"] for m in requests.post(f"{base}/v2/repository/index", timeout=10).json()}
        assert not any(".." in n or "/" in n for n in names), names

        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("../fraud")
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.close()
    finally:
        assert server.stop() == 0


def test_sigterm_during_load_loses_no_accepted_request(tmp_path, fixture):
    db = tmp_path / "records.sqlite"
    server = KilnServer(make_repository(tmp_path), ["--records", f"sqlite:{db}", "--shutdown-delay-secs", "1.5"])
    body = json.dumps(fraud_request(fraud_rows(fixture, 8)))
    base = f"http://{server.url}"
    outcomes = {"ok": 0, "refused": 0, "other": []}
    lock = threading.Lock()
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{base}/v2/models/fraud/infer", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
            except requests.exceptions.ConnectionError:
                # Never read by the server (listener closed, or a kept-alive connection closed
                # before this request went out): not accepted, so not lost.
                with lock:
                    outcomes["refused"] += 1
                session = requests.Session()
                time.sleep(0.01)
                continue
            with lock:
                if r.status_code == 200 and len(r.json()["outputs"]) == 2:
                    outcomes["ok"] += 1
                else:
                    outcomes["other"].append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    served_before = outcomes["ok"]
    server.proc.send_signal(signal.SIGTERM)
    # During the delay: readiness is false while requests are still answered.
    ready_seen, deadline = None, time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            ready_seen = requests.get(f"{base}/v2/health/ready", timeout=5).status_code
            if ready_seen == 503:
                break
        except requests.exceptions.ConnectionError:
            break
        time.sleep(0.02)
    during_delay = outcomes["ok"]
    code = server.proc.wait(timeout=40)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    server.log.close()

    print(f"SIGTERM under load: {outcomes['ok']} answered ({served_before} before the signal, "
          f"{during_delay - served_before} while not ready), {outcomes['refused']} refused at connect")
    assert code == 0, server.logs()
    assert ready_seen == 503, "readiness did not turn false before the listeners closed"
    assert served_before > 0 and outcomes["ok"] > during_delay, outcomes
    assert outcomes["other"] == [], outcomes["other"][:5]
    # Every answered request was logged before exit.
    with sqlite3.connect(db) as conn:
        logged = conn.execute("SELECT count(*) FROM predictions WHERE model = 'fraud'").fetchone()[0]
    assert logged == outcomes["ok"], (logged, outcomes)


def test_a_rotated_token_file_takes_effect_without_a_restart(tmp_path, token_file, fixture):
    server = KilnServer(make_repository(tmp_path), ["--auth-token-file", str(token_file), "--auth-reload-secs", "0.2"])
    url = f"http://{server.url}/v2/models/fraud/infer"
    body = fraud_request(fraud_rows(fixture, 1))
    bearer = lambda token: {"Authorization": f"Bearer {token}"}
    try:
        assert requests.post(url, json=body, headers=bearer(INFERENCE_TOKEN), timeout=10).status_code == 200
        rotated = "rotated-token-5555555555555555"
        # Written the way a Secret volume does it: a new file moved over the old one.
        (tmp_path / "tokens.new").write_text(f"frontend inference {rotated}\n")
        os.replace(tmp_path / "tokens.new", token_file)
        deadline = time.monotonic() + 10
        while requests.post(url, json=body, headers=bearer(rotated), timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the rotated token never took effect"
            time.sleep(0.1)
        assert requests.post(url, json=body, headers=bearer(INFERENCE_TOKEN), timeout=10).status_code == 401
        # A broken file keeps the tokens in use.
        token_file.write_text("not a token line\n")
        time.sleep(1)
        assert requests.post(url, json=body, headers=bearer(rotated), timeout=10).status_code == 200
        assert "keeping the tokens in use" in server.logs()
    finally:
        assert server.stop() == 0
    assert rotated not in server.logs()

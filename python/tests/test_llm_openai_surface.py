"""The OpenAI surface beyond text: log-probabilities (chat `logprobs` + `top_logprobs`,
completions `logprobs`) equal to llama.cpp's own (llama-cpp-python) for the same text, and `n`
choices per request, whole and streamed, through the real `openai` client."""

import json

import openai
import pytest
import requests

from conftest import DEMO_GGUF, KilnServer, gemma_gguf, link_file

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("surface") / "models"
    models = {"smollm2": DEMO_GGUF, "gemma": gemma_gguf()}
    for name, gguf in models.items():
        link_file(gguf, repo / name / "1" / "model.gguf")
        template = 'chat_template = "gemma"\n' if name == "gemma" else ""
        (repo / name / "config.toml").write_text(
            f'kind = "llm"\nthreads = 2\n[llm]\ncontext_length = 512\nmax_sequences = 4\n{template}')
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    yield s, models
    assert s.stop() == 0


def client(server):
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(server, path, body):
    return requests.post(f"http://{server.url}{path}", json=body, timeout=120)


@pytest.mark.parametrize("model", ["smollm2", "gemma"])
def test_completion_logprobs_equal_llama_cpp_pythons_for_the_same_text(server, model):
    s, models = server
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    llm = llama_cpp.Llama(str(models[model]), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    for prompt in PROMPTS:
        r = post(s, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0,
                                        "logprobs": 3})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        ours = choice["logprobs"]
        theirs = llm.create_completion(prompt, max_tokens=16, temperature=0.0, logprobs=3)["choices"][0]
        assert choice["text"] == theirs["text"], prompt
        assert "".join(ours["tokens"]) == choice["text"]
        assert len(ours["token_logprobs"]) == len(ours["tokens"]) == len(ours["top_logprobs"])
        n = len(theirs["logprobs"]["token_logprobs"])
        assert sum(ours["token_logprobs"][:n]) == pytest.approx(sum(theirs["logprobs"]["token_logprobs"]), abs=1e-3)
        for mine, ref in zip(ours["token_logprobs"], theirs["logprobs"]["token_logprobs"]):
            assert mine == pytest.approx(ref, abs=1e-3)
        # Greedy: each chosen token is the most likely, and the top entries hold it.
        for token, lp, top in zip(ours["tokens"], ours["token_logprobs"], ours["top_logprobs"]):
            assert top[token] == lp and max(top.values()) == pytest.approx(lp, abs=1e-6) and len(top) in (3, 4)
        assert ours["text_offset"][0] == len(prompt)


def test_chat_logprobs_through_the_openai_client_whole_and_streamed(server):
    s, _ = server
    c = client(s)
    ask = [{"role": "user", "content": "Name a color."}]
    r = c.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=12, logprobs=True,
                                  top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == t.logprob >= t.top_logprobs[1].logprob
        assert bytes(t.bytes).decode(errors="replace") == t.token and t.logprob <= 0
    streamed = []
    for chunk in c.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    # Without logprobs, none.
    r = c.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=4)
    assert r.choices[0].logprobs is None


def test_n_choices_whole_and_streamed(server):
    s, _ = server
    c = client(s)
    ask = [{"role": "user", "content": "Write a word."}]
    sampled = dict(model="smollm2", messages=ask, temperature=1.0, max_tokens=12, n=3, seed=7)
    r = c.chat.completions.create(**sampled)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    texts = [ch.message.content for ch in r.choices]
    assert len(set(texts)) > 1, texts  # each choice draws with its own seed
    assert [ch.message.content for ch in c.chat.completions.create(**sampled).choices] == texts
    one = c.chat.completions.create(**{**sampled, "n": 1})
    assert one.choices[0].message.content == texts[0]  # choice 0 draws with the request's seed
    assert r.usage.prompt_tokens == one.usage.prompt_tokens and 3 <= r.usage.completion_tokens <= 36
    # Streamed: the chunks of each index add up to the same texts.
    pieces = {0: "", 1: "", 2: ""}
    finished = set()
    for chunk in c.chat.completions.create(**sampled, stream=True):
        for ch in chunk.choices:
            pieces[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert [pieces[i] for i in range(3)] == texts and finished == {0, 1, 2}
    # Greedy choices are equal; the completions API takes n too.
    r = post(s, "/v1/completions", {"model": "gemma", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
                                    "n": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [ch["index"] for ch in choices] == [0, 1] and choices[0]["text"] == choices[1]["text"]
    # More choices than sequence slots: 400 naming n.
    r = post(s, "/v1/completions", {"model": "gemma", "prompt": "x", "n": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "max_sequences" in r.text
    r = post(s, "/v1/completions", {"model": "gemma", "prompt": "x", "logprobs": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"

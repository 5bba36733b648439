"""LLMs beyond SmolLM2: Gemma 3 270M (a base model, sliding-window attention, Q4_K_M weights, no
chat template in its GGUF) gives the same greedy text on a repeat, streamed, with and without the
prefix cache, equal to llama.cpp's own (llama-cpp-python); chat templates come from config.toml
(a built-in name or a .jinja file), rendered exactly as Hugging Face's jinja2 renders the real
templates of five families; llama-server's sampling extensions and /tokenize, /detokenize.
Concurrent requests give their solo texts too: a model whose logits change when sequences
share a decode step (Gemma) has each generating sequence decoded alone."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import DEMO_GGUF, ROOT, KilnServer, gemma_gguf, link_file, metric

TEMPLATES = ROOT.parent / "shared" / "llm-templates"
FAMILIES = {
    "llama31": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "qwen25": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "gemma2": "google-gemma-2-2b-it.jinja",
    "phi35": "microsoft-Phi-3.5-mini-instruct.jinja",
}
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, the first humans",
    "Water boils at",
    "A list of fruits: apple, banana,",
    "The best way to learn a language is",
]


def llm_folder(repo, name, gguf, llm_lines=""):
    folder = repo / name
    link_file(gguf, folder / "1" / "model.gguf")
    (folder / "config.toml").write_text(
        f'kind = "llm"\nthreads = 2\nmax_queue_size = 64\n[llm]\ncontext_length = 1024\nmax_sequences = 8\n{llm_lines}')
    return folder


def complete(server, model, prompt, stream=False, max_tokens=40):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    r = requests.post(f"http://{server.url}/v1/completions", json=body, timeout=300, stream=stream)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()["choices"][0]["text"]
    pieces = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            pieces.append(json.loads(line[6:])["choices"][0].get("text", ""))
    r.close()
    return "".join(pieces)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gemma") / "models"
    gguf = gemma_gguf()
    llm_folder(repo, "gemma", gguf, 'chat_template = "gemma"\n')
    llm_folder(repo, "gemma_nocache", gguf, "prefix_cache = false\n")
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    yield s, gguf
    assert s.stop() == 0


def test_gemma_greedy_text_repeats_streamed_concurrent_and_with_or_without_the_prefix_cache(gemma):
    server, _ = gemma
    solo = [complete(server, "gemma", p) for p in PROMPTS]
    assert [complete(server, "gemma", p) for p in PROMPTS] == solo
    assert [complete(server, "gemma", p, stream=True) for p in PROMPTS] == solo
    # Gemma's logits differ when sequences share a decode step (kiln measures it at load):
    # each generating sequence is then decoded alone, and 8 at once give their solo texts.
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda p: complete(server, "gemma", p), PROMPTS)) == solo
        assert list(pool.map(lambda p: complete(server, "gemma_nocache", p, stream=True), PROMPTS)) == solo
    models = {m["id"]: m for m in requests.get(f"http://{server.url}/v1/models", timeout=10).json()["data"]}
    assert models["gemma"]["batched_steps"] is False
    assert [complete(server, "gemma_nocache", p) for p in PROMPTS] == solo
    # Gemma's logits change with the batch shape a prompt's tail is decoded in (by up to ~1.0,
    # not rounding), so a sliding-window model reuses kept cells only in whole 512-token chunks,
    # which a fresh decode computes the same way; and not at all once its window has dropped
    # the cells a continuation attends to. Long prompts sharing a start: the same texts.
    long = " ".join(PROMPTS * 12)
    for ending in (" So", " So", " Then", " So"):
        assert complete(server, "gemma", long + ending) == complete(server, "gemma_nocache", long + ending)


def test_gemma_greedy_text_equals_llama_cpp_python(gemma):
    """The reference: llama.cpp through llama-cpp-python (built like kiln's llama.cpp: x86-64-v3,
    no weight repacking), same GGUF, same prompts, greedy."""
    server, gguf = gemma
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=2, verbose=False)
    for p in PROMPTS:
        theirs = llm.create_completion(p, max_tokens=40, temperature=0.0)["choices"][0]["text"]
        assert complete(server, "gemma", p) == theirs, p


def test_gemma_chats_through_a_built_in_template(gemma):
    server, gguf = gemma
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky color?"}]
    r = requests.post(f"http://{server.url}/apply-template", json={"model": "gemma", "messages": messages}, timeout=30)
    assert r.status_code == 200, r.text
    prompt = r.json()["prompt"]
    assert prompt == "<bos><start_of_turn>user\nAnswer in one word.\n\nSky color?<end_of_turn>\n<start_of_turn>model\n"
    chat = {"model": "gemma", "messages": messages, "temperature": 0, "max_tokens": 12}
    r = requests.post(f"http://{server.url}/v1/chat/completions", json=chat, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    # The same text as a completion of the rendered prompt (the template's <bos> is the BOS).
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=2, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    theirs = llm.create_completion(tokens, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert answer == theirs.strip() or answer == theirs
    # Without a chat template, chat says what to configure.
    r = requests.post(f"http://{server.url}/v1/chat/completions", json={**chat, "model": "gemma_nocache"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "[llm] chat_template" in r.json()["error"]["message"]


def jinja2_render(source, messages, bos, eos):
    """What Hugging Face's apply_chat_template renders (its jinja2 environment and globals)."""
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: __import__("datetime").datetime.now().strftime(f)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, tools=None,
                                          bos_token=bos, eos_token=eos)


@pytest.mark.skipif(not TEMPLATES.is_dir(), reason="../shared/llm-templates is team material, not in this checkout")
def test_real_templates_of_five_families_render_as_jinja2_does(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    vocab = llama_cpp.Llama(str(DEMO_GGUF), vocab_only=True, verbose=False)
    piece = lambda t: vocab.detokenize([t], special=True).decode()
    bos, eos = piece(vocab.token_bos()), piece(vocab.token_eos())
    repo = tmp_path / "models"
    for name, file in FAMILIES.items():
        folder = llm_folder(repo, name, DEMO_GGUF, f'chat_template = "{file}"\n')
        shutil.copyfile(TEMPLATES / file, folder / file)
    conversations = [
        [{"role": "user", "content": "Hello there"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Two plus two?  "}],
        [{"role": "user", "content": "Ünïcödé — \"quotes\" and\nnew lines"}, {"role": "assistant", "content": "Ok"},
         {"role": "user", "content": "again"}],
    ]
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    try:
        for name, file in FAMILIES.items():
            source = (TEMPLATES / file).read_text()
            for messages in conversations:
                try:
                    want = jinja2_render(source, messages, bos, eos)
                except Exception as e:  # the template refuses these messages: kiln must too
                    want = e
                r = requests.post(f"http://{s.url}/apply-template", json={"model": name, "messages": messages},
                                  timeout=30)
                if isinstance(want, Exception):
                    assert r.status_code == 400, (name, r.text)
                    assert str(want) in r.json()["error"]["message"], (name, want, r.text)
                else:
                    assert r.status_code == 200, (name, r.text)
                    assert r.json()["prompt"] == want, (name, messages)
        info = {m["id"]: m for m in requests.get(f"http://{s.url}/v1/models", timeout=10).json()["data"]}
        assert all(info[name]["chat_template"] == f"file:{file}" for name, file in FAMILIES.items())
    finally:
        assert s.stop() == 0


def test_a_bad_chat_template_setting_is_a_load_error_naming_it(tmp_path):
    repo = tmp_path / "models"
    llm_folder(repo, "unknown", DEMO_GGUF, 'chat_template = "vicuna"\n')
    llm_folder(repo, "missing", DEMO_GGUF, 'chat_template = "nope.jinja"\n')
    broken = llm_folder(repo, "broken", DEMO_GGUF, 'chat_template = "broken.jinja"\n')
    (broken / "broken.jinja").write_text("{% for m in messages %}")
    (repo / "escape").mkdir()
    (repo / "escape" / "config.toml").write_text('kind = "llm"\n[llm]\nchat_template = "../x.jinja"\n')
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    try:
        index = {m["name"]: m for m in requests.post(f"http://{s.url}/v2/repository/index", json={}, timeout=10).json()}
        assert "chat_template 'vicuna' is not a built-in template (chatml, llama3, gemma, mistral, phi3)" \
            in index["unknown"]["reason"]
        assert "nope.jinja" in index["missing"]["reason"]
        assert "chat template (file:broken.jinja)" in index["broken"]["reason"]
        assert "[llm] chat_template must be a built-in name or a .jinja file in the model folder" \
            in index["escape"]["reason"]
    finally:
        assert s.stop() == 0


def post(server, path, body):
    return requests.post(f"http://{server.url}{path}", json=body, timeout=120)


def test_penalties_biases_and_llama_cpp_filters_shape_the_text(gemma):
    server, _ = gemma
    base = {"model": "gemma", "prompt": "one one one one one one", "max_tokens": 16, "temperature": 0}
    plain = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    assert post(server, "/v1/completions", base).json()["choices"][0]["text"] == plain
    # A text that repeats itself (Gemma's greedy answer about Paris says "the capital of" again
    # and again): each penalty changes it, and the same request repeats.
    paris = {**base, "prompt": "The capital of France is", "max_tokens": 40}
    plain_paris = post(server, "/v1/completions", paris).json()["choices"][0]["text"]
    for request, unshaped in ((base, plain), (paris, plain_paris)):
        for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repeat_penalty": 1.8}):
            r = post(server, "/v1/completions", {**request, **extra})
            assert r.status_code == 200, r.text
            shaped = r.json()["choices"][0]["text"]
            if request is paris or "presence_penalty" not in extra:  # " one" outweighs a presence of 2
                assert shaped != unshaped, extra
            assert post(server, "/v1/completions", {**request, **extra}).json()["choices"][0]["text"] == shaped
    # Banning the greedy first token moves the text off it.
    first = post(server, "/tokenize", {"model": "gemma", "content": plain})
    assert first.status_code == 200, first.text
    banned = first.json()["tokens"][0]
    r = post(server, "/v1/completions", {**base, "logit_bias": {str(banned): -100}})
    assert r.status_code == 200, r.text
    biased = r.json()["choices"][0]["text"]
    assert post(server, "/tokenize", {"model": "gemma", "content": biased}).json()["tokens"][0] != banned
    # Seeded sampling with llama.cpp's filters repeats.
    seeded = {**base, "temperature": 0.9, "seed": 11, "top_k": 20, "min_p": 0.05}
    texts = {post(server, "/v1/completions", seeded).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1
    # Out of range or out of the vocabulary: 400 naming the parameter.
    for bad, param in (({"logit_bias": {"99999999": 5}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
                       ({"logit_bias": {"5": 101}}, "logit_bias"), ({"presence_penalty": 3}, "presence_penalty"),
                       ({"repeat_penalty": 0}, "repeat_penalty"), ({"top_k": -1}, "top_k"), ({"min_p": 2}, "min_p")):
        r = post(server, "/v1/completions", {**base, **bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == param, (bad, r.text)


def test_tokenize_and_detokenize_round_trip(gemma):
    server, gguf = gemma
    text = "Hello, wörld! <start_of_turn>"
    r = post(server, "/tokenize", {"model": "gemma", "content": text})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert post(server, "/detokenize", {"model": "gemma", "tokens": tokens}).json()["content"] == text
    with_bos = post(server, "/tokenize", {"model": "gemma", "content": text, "add_special": True}).json()["tokens"]
    assert with_bos[1:] == tokens and with_bos[0] != tokens[0]
    pieces = post(server, "/tokenize", {"model": "gemma", "content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens and "".join(p["piece"] for p in pieces) == text
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    assert tokens == vocab.tokenize(text.encode(), add_bos=False, special=True)
    r = post(server, "/detokenize", {"model": "gemma", "tokens": [10**8]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", r.text

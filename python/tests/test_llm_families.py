"""LLMs beyond SmolLM2: Gemma 3 270M (a base model, sliding-window attention, Q4_K_M weights, no
chat template in its GGUF) gives the same greedy text on a repeat, streamed, with and without the
prefix cache, equal to llama.cpp's own (llama-cpp-python); chat templates come from config.toml
(a built-in name or a .jinja file), rendered exactly as Hugging Face's jinja2 renders the real
templates of five families; llama-server's sampling extensions and /tokenize, /detokenize.
Concurrent requests give their solo texts too, decoded together: kiln runs ggml without its
tiled K-quant matmul, whose sums change with the number of rows in a batch."""

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


def same_text_every_way(server, model, pool):
    """`model`'s greedy texts for PROMPTS, after checking they come again on a repeat, streamed,
    and 8 at once (8 rows share decode steps: where ggml's tiled matmul would take over)."""
    solo = [complete(server, model, p) for p in PROMPTS]
    assert [complete(server, model, p) for p in PROMPTS] == solo
    assert [complete(server, model, p, stream=True) for p in PROMPTS] == solo
    assert list(pool.map(lambda p: complete(server, model, p), PROMPTS)) == solo
    return solo


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gemma") / "models"
    gguf = gemma_gguf()
    llm_folder(repo, "gemma", gguf, 'chat_template = "gemma"\n')
    llm_folder(repo, "gemma_nocache", gguf, "prefix_cache = false\n")
    llm_folder(repo, "gemma_fa", gguf, "flash_attention = true\n")
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    yield s, gguf
    assert s.stop() == 0


def test_gemma_greedy_text_repeats_streamed_concurrent_and_with_or_without_the_prefix_cache(gemma):
    server, _ = gemma
    with ThreadPoolExecutor(8) as pool:
        solo = same_text_every_way(server, "gemma", pool)
        assert list(pool.map(lambda p: complete(server, "gemma_nocache", p, stream=True), PROMPTS)) == solo
    models = {m["id"]: m for m in requests.get(f"http://{server.url}/v1/models", timeout=10).json()["data"]}
    assert models["gemma"]["batched_steps"] is True
    assert models["gemma"]["prefix_cache"] is True and models["gemma_nocache"]["prefix_cache"] is False
    assert [complete(server, "gemma_nocache", p) for p in PROMPTS] == solo
    # A kept prompt is reused whatever the length of the tail decoded after it, but not once
    # the sliding window has dropped the cells a continuation attends to. Long prompts sharing
    # a start (longer than the 512-token window): the same texts as without the cache.
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


def test_flash_attention_gives_the_same_answer_every_way_and_equals_llama_cpp_python(gemma):
    """With flash attention a prompt row's numbers depend on the rows sharing its micro-batch, so
    kiln cuts every prompt into the same 64-token blocks from position 0 and reuses kept prompts
    in whole blocks only: the same request gives the same text — repeated, streamed, 8 at once,
    after a prompt sharing its start (served from the cache) — equal to llama-cpp-python's with
    flash attention cutting alike (n_batch = n_ubatch = 64)."""
    server, gguf = gemma
    with ThreadPoolExecutor(8) as pool:
        solo = same_text_every_way(server, "gemma_fa", pool)
    long = " ".join(PROMPTS * 4)
    cached = lambda: metric(server.metrics(), "kiln_llm_prompt_tokens_cached_total", model="gemma_fa")
    first = complete(server, "gemma_fa", long + " So")
    complete(server, "gemma_fa", long + " Then")
    before = cached()
    assert complete(server, "gemma_fa", long + " So") == first
    assert cached() - before >= 128  # whole blocks of the kept prompt were reused
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=2, flash_attn=True, n_batch=64, n_ubatch=64, verbose=False)
    for p, ours in zip(PROMPTS + [long + " So"], solo + [first]):
        # Its own prompt reuse off (it keeps the last prompt and decodes what follows the common
        # start, cut elsewhere than whole blocks).
        llm.reset()
        assert llm.create_completion(p, max_tokens=40, temperature=0.0)["choices"][0]["text"] == ours, p


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


def jinja2_render(source, messages, bos, eos, tools=None, **kwargs):
    """What Hugging Face's apply_chat_template renders (its jinja2 environment and globals)."""
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: __import__("datetime").datetime.now().strftime(f)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, tools=tools,
                                          bos_token=bos, eos_token=eos, **kwargs)


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


# Templates that take tools, and the call syntax kiln reads from each.
TOOL_FAMILIES = {
    "llama31": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"),
    "llama32": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3"),
    "qwen25": ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "hermes"),
    "hermes3": ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes"),
    "mistral": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
    "granite": ("ibm-granite-granite-3.3-2B-Instruct.jinja", "granite"),
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
# A template of the newer kind, which reads OpenAI content-part lists as Hugging Face passes them.
PARTS_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{% if m.content is string %}{{ m.content }}"
                  "{% else %}{% for p in m.content %}[{{ p.type }}:{{ p.text }}]{% endfor %}{% endif %}\n"
                  "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def hf_messages(messages):
    """OpenAI messages as Hugging Face templates take them: call arguments as dicts, no null content."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content", "") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    if not TEMPLATES.is_dir():
        pytest.skip("../shared/llm-templates is team material, not in this checkout")
    repo = tmp_path_factory.mktemp("tools") / "models"
    for name, (file, _) in TOOL_FAMILIES.items():
        folder = llm_folder(repo, name, DEMO_GGUF, f'chat_template = "{file}"\n')
        shutil.copyfile(TEMPLATES / file, folder / file)
    r1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
    shutil.copyfile(TEMPLATES / r1, llm_folder(repo, "r1", DEMO_GGUF, f'chat_template = "{r1}"\n') / r1)
    (llm_folder(repo, "parts", DEMO_GGUF, 'chat_template = "parts.jinja"\n') / "parts.jinja").write_text(
        PARTS_TEMPLATE)
    s = KilnServer(repo, ["--points", "off", "--records", "off"])
    yield s
    assert s.stop() == 0


def test_templates_render_tools_calls_results_and_content_parts_as_jinja2_does(tool_server):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (requirements-llm.txt)")
    vocab = llama_cpp.Llama(str(DEMO_GGUF), vocab_only=True, verbose=False)
    piece = lambda t: vocab.detokenize([t], special=True).decode()
    bos, eos = piece(vocab.token_bos()), piece(vocab.token_eos())
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    conversations = [
        [{"role": "user", "content": "Weather in Oslo?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
         {"role": "assistant", "content": None, "tool_calls": [call]},
         {"role": "tool", "tool_call_id": "abcDEF123", "content": "-3 C"}],
    ]
    models = {m["id"]: m for m in requests.get(f"http://{tool_server.url}/v1/models", timeout=10).json()["data"]}
    for name, (file, syntax) in TOOL_FAMILIES.items():
        assert models[name]["tool_syntax"] == syntax, name
        source = (TEMPLATES / file).read_text()
        for messages in conversations:
            theirs = hf_messages(messages)
            try:
                want = jinja2_render(source, theirs, bos, eos, tools=[WEATHER])
            except Exception as e:
                want = e
            r = post(tool_server, "/apply-template", {"model": name, "messages": messages, "tools": [WEATHER]})
            if isinstance(want, Exception):
                assert r.status_code == 400 and str(want) in r.text, (name, want, r.text)
            else:
                assert r.status_code == 200, (name, r.text)
                assert r.json()["prompt"] == want, (name, messages)
                assert "get_weather" in want and "The city" in want, name  # the template wrote the tool
    # Content parts reach a template as the list of parts.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    r = post(tool_server, "/apply-template", {"model": "parts", "messages": parts})
    assert r.json()["prompt"] == jinja2_render(PARTS_TEMPLATE, parts, bos, eos) == "<user>[text:Hello ][text:there]<assistant>"
    # chat_template_kwargs reach the template (DeepSeek R1's opens its thoughts with enable_thinking).
    ask = [{"role": "user", "content": "2+2?"}]
    r1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    for kwargs in ({}, {"enable_thinking": True}):
        r = post(tool_server, "/apply-template", {"model": "r1", "messages": ask, "chat_template_kwargs": kwargs})
        assert r.status_code == 200 and r.json()["prompt"] == jinja2_render(r1, ask, bos, eos, **kwargs), r.text
    r = post(tool_server, "/apply-template", {"model": "r1", "messages": ask, "chat_template_kwargs": {"messages": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


@pytest.mark.parametrize("name", ["llama31", "qwen25", "mistral", "granite"])
def test_tool_calls_in_each_familys_native_syntax_parsed_and_streamed(tool_server, name):
    import openai
    client = openai.OpenAI(base_url=f"http://{tool_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    ask = dict(model=name, messages=[{"role": "user", "content": "What is the weather in Oslo?"}], tools=[WEATHER],
               tool_choice="required", temperature=0, max_tokens=60)
    r = client.chat.completions.create(**ask)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    if name == "mistral":  # Mistral's template accepts only 9-character ids in the next turn
        assert len(call.id) == 9 and call.id.isalnum()
    # The model wrote the family's syntax: the same prompt completed under no grammar with the call's
    # text as a stop shows the opening the grammar allowed (what the text must start with).
    opening = {"llama31": '{"name": "get_weather", "parameters": ', "qwen25": '<tool_call>\n{"name": "get_weather"',
               "mistral": '[TOOL_CALLS][{"name": "get_weather"', "granite": '<|tool_call|>[{"name": "get_weather"'}
    logged = client.chat.completions.create(**ask, logprobs=True)
    assert "".join(t.token for t in logged.choices[0].logprobs.content).startswith(opening[name])
    # Streamed: the deltas assemble to the same call.
    name_seen, arguments, finish = None, "", None
    for chunk in client.chat.completions.create(**ask, stream=True):
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                name_seen = d.function.name or name_seen
                arguments += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert (name_seen, arguments, finish) == ("get_weather", call.function.arguments, "tool_calls")
    # The call goes back through the template as the family writes it, and the model answers.
    follow = ask["messages"] + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                                {"role": "tool", "tool_call_id": call.id, "content": "-3 C and snow"}]
    r = post(tool_server, "/apply-template", {"model": name, "messages": follow, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    source = (TEMPLATES / TOOL_FAMILIES[name][0]).read_text()
    bos, eos = "<|im_start|>", "<|im_end|>"  # SmolLM2's
    assert r.json()["prompt"] == jinja2_render(source, hf_messages(follow), bos, eos, tools=[WEATHER])
    r = client.chat.completions.create(**{**ask, "messages": follow, "tool_choice": "none", "max_tokens": 8})
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_reasoning_models_thoughts_go_to_reasoning_content(tool_server):
    """DeepSeek R1's template opens `<think>` with enable_thinking: what the model writes until
    `</think>` is reasoning_content, whole and streamed (SmolLM2 never closes it in 12 tokens)."""
    models = {m["id"]: m for m in requests.get(f"http://{tool_server.url}/v1/models", timeout=10).json()["data"]}
    assert models["r1"]["reasoning"] is True and models["qwen25"]["reasoning"] is False
    body = {"model": "r1", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0,
            "max_tokens": 12, "chat_template_kwargs": {"enable_thinking": True}}
    r = post(tool_server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    prompt = post(tool_server, "/apply-template", {k: body[k] for k in ("model", "messages", "chat_template_kwargs")})
    assert prompt.json()["prompt"].endswith("<think>\n")
    tokens = post(tool_server, "/tokenize", {"model": "r1", "content": prompt.json()["prompt"]}).json()["tokens"]
    plain = post(tool_server, "/v1/completions", {"model": "r1", "prompt": prompt.json()["prompt"], "max_tokens": 12,
                                                  "temperature": 0}).json()["choices"][0]["text"]
    assert tokens and message["reasoning_content"] == plain.strip() and message["content"] == ""
    streamed = {"reasoning_content": "", "content": ""}
    with requests.post(f"http://{tool_server.url}/v1/chat/completions", json={**body, "stream": True},
                       stream=True, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith(b"data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                for key in streamed:
                    streamed[key] += delta.get(key) or ""
    assert streamed == {"reasoning_content": message["reasoning_content"], "content": ""}
    # Without enable_thinking the template closes the thoughts itself: all of it is the answer.
    r = post(tool_server, "/v1/chat/completions", {**body, "chat_template_kwargs": {}})
    assert "reasoning_content" not in r.json()["choices"][0]["message"]

"""`[rollout] shadow` for LLMs: once the caller has its answer, the shadow version generates for
the same request — its own chat template renders the messages — and the texts are compared
exactly (GET /v1/models/{m}/rollout). Real GGUF models on llama.cpp: SmolLM2 shadowing itself
agrees every time at temperature 0; Gemma 3 shadowing SmolLM2 does not."""

import time

import requests

from conftest import KilnServer, gemma_gguf, link_file, link_gguf

CONFIG = ('kind = "llm"\nthreads = 2\nmax_queue_size = 16\n[llm]\ncontext_length = 512\nmax_sequences = 2\n'
          '[rollout]\nshadow = 2\n')


def llm_versions(repo, name, ggufs):
    for version, place in ggufs.items():
        place(repo / name / str(version) / "model.gguf")
    (repo / name / "config.toml").write_text(CONFIG)


def rollout_when(server, model, done, timeout=120):
    deadline = time.time() + timeout
    while True:
        body = requests.get(f"http://{server.url}/v1/models/{model}/rollout", timeout=10).json()
        if done(body["shadow_comparison"]) or time.time() > deadline:
            return body["shadow_comparison"]
        time.sleep(0.2)


def test_an_llm_shadow_generates_for_the_same_requests_and_its_text_is_compared(tmp_path):
    repo = tmp_path / "models"
    gemma = gemma_gguf()
    llm_versions(repo, "same", {1: link_gguf, 2: link_gguf})
    llm_versions(repo, "other", {1: link_gguf, 2: lambda target: link_file(gemma, target)})
    s = KilnServer(repo, ["--points", "off"])
    try:
        session = requests.Session()
        for i in range(3):
            chat = {"model": "same", "messages": [{"role": "user", "content": f"Name a colour. ({i})"}],
                    "max_tokens": 12, "temperature": 0}
            r = session.post(f"http://{s.url}/v1/chat/completions", json=chat, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "same"
        streamed = {"model": "same", "prompt": "The sky is", "max_tokens": 12, "temperature": 0, "stream": True}
        r = session.post(f"http://{s.url}/v1/completions", json=streamed, timeout=120)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
        same = rollout_when(s, "same", lambda c: c["agreed"] + c["disagreed"] + c["failed"] >= 4)
        assert (same["sent"], same["agreed"], same["disagreed"], same["failed"]) == (4, 4, 0, 0), same

        prompt = {"model": "other", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
        for _ in range(2):
            assert session.post(f"http://{s.url}/v1/completions", json=prompt, timeout=120).status_code == 200
        other = rollout_when(s, "other", lambda c: c["agreed"] + c["disagreed"] + c["failed"] >= 2)
        assert (other["sent"], other["disagreed"], other["failed"]) == (2, 2, 0), other

        # A grammar is compiled for the answering model's vocabulary: not shadowed.
        constrained = {**prompt, "response_format": {"type": "json_object"}}
        assert session.post(f"http://{s.url}/v1/completions", json=constrained, timeout=120).status_code == 200
        time.sleep(1)
        assert rollout_when(s, "other", lambda c: True)["sent"] == 2
    finally:
        assert s.stop() == 0

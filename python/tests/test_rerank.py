"""Rerankers from Hugging Face cross-encoder folders: tiny BertForSequenceClassification and
XLMRobertaForSequenceClassification models with random weights, written here as safetensors,
served by kiln (the folder as it is, no config.toml) at POST /v1/rerank (Cohere/Jina shape) and
POST /rerank (TEI shape), each score checked against a numpy forward pass of the same weights on
the same tokens."""

import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from scipy.special import erf
from tokenizers import Tokenizer

from conftest import DEMO_MINILM, HAVE_MINILM, NO_MINILM, KilnServer, link_file

pytestmark = pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM)  # its tokenizer.json is reused

H, HEADS, LAYERS, INNER, POSITIONS, VOCAB = 32, 4, 2, 64, 64, 30522


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def make_cross_encoder(folder, family, seed):
    rng = np.random.default_rng(seed)
    base = "bert." if family == "bert" else "roberta."
    types = 2 if family == "bert" else 1
    w = {}

    def put(name, *shape, scale=0.2):
        w[name] = (rng.standard_normal(shape) * scale).astype(np.float32)

    put(base + "embeddings.word_embeddings.weight", VOCAB, H)
    put(base + "embeddings.position_embeddings.weight", POSITIONS, H)
    put(base + "embeddings.token_type_embeddings.weight", types, H)
    put(base + "embeddings.LayerNorm.weight", H)
    w[base + "embeddings.LayerNorm.weight"] += 1
    put(base + "embeddings.LayerNorm.bias", H)
    for layer in range(LAYERS):
        p = f"{base}encoder.layer.{layer}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            put(p + part + ".weight", H, H)
            put(p + part + ".bias", H)
        put(p + "intermediate.dense.weight", INNER, H)
        put(p + "intermediate.dense.bias", INNER)
        put(p + "output.dense.weight", H, INNER)
        put(p + "output.dense.bias", H)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            put(p + ln + ".weight", H)
            w[p + ln + ".weight"] += 1
            put(p + ln + ".bias", H)
    if family == "bert":
        put("bert.pooler.dense.weight", H, H)
        put("bert.pooler.dense.bias", H)
        put("classifier.weight", 1, H)
        put("classifier.bias", 1)
        architecture, model_type = "BertForSequenceClassification", "bert"
    else:
        put("classifier.dense.weight", H, H)
        put("classifier.dense.bias", H)
        put("classifier.out_proj.weight", 1, H)
        put("classifier.out_proj.bias", 1)
        architecture, model_type = "XLMRobertaForSequenceClassification", "xlm-roberta"
    folder.mkdir(parents=True)
    config = {"architectures": [architecture], "model_type": model_type, "hidden_size": H,
              "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "intermediate_size": INNER,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": POSITIONS,
              "type_vocab_size": types, "pad_token_id": 1 if family == "roberta" else 0,
              "id2label": {"0": "LABEL_0"}}
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", w)
    link_file(DEMO_MINILM / "tokenizer.json", folder / "tokenizer.json")
    return w


def numpy_logit(w, family, ids, type_ids):
    base = "bert." if family == "bert" else "roberta."
    offset = 0 if family == "bert" else 2
    g = lambda name: w[base + name].astype(np.float64)  # noqa: E731

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * g(name + ".weight") + g(name + ".bias")

    def linear(x, name, prefix=base):
        return x @ w[prefix + name + ".weight"].astype(np.float64).T + w[prefix + name + ".bias"]

    n = len(ids)
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[offset:offset + n]
    # RoBERTa has one token type (its own tokenizers give every token type 0).
    x = x + g("embeddings.token_type_embeddings.weight")[type_ids if family == "bert" else 0 * type_ids]
    x = ln(x, "embeddings.LayerNorm")
    hd = H // HEADS
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."
        q, k, v = (linear(x, p + "attention.self." + t).reshape(n, HEADS, hd).transpose(1, 0, 2)
                   for t in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        x = ln(linear(ctx.transpose(1, 0, 2).reshape(n, H), p + "attention.output.dense") + x,
               p + "attention.output.LayerNorm")
        up = linear(x, p + "intermediate.dense")
        up = 0.5 * up * (1 + erf(up / np.sqrt(2)))
        x = ln(linear(up, p + "output.dense") + x, p + "output.LayerNorm")
    cls = x[0]
    if family == "bert":
        return linear(np.tanh(linear(cls, "pooler.dense")), "classifier", prefix="")[0]
    return linear(np.tanh(linear(cls, "classifier.dense", prefix="")), "classifier.out_proj", prefix="")[0]


QUERY = "how do I reset my online banking password?"
DOCUMENTS = [
    "Reset your password from the login page: choose Forgot password and follow the e-mail link.",
    "Branches open at nine.",
    "Card payments abroad carry no fee in the eurozone. " * 12,  # longer than the model: truncated
    "Passwörter können in der App geändert werden — naïve café 🚀",
]


PASSAGES = ["If your card is lost or stolen, freeze it in the app and order a replacement card.",
            "Transfers to another bank take one working day.",
            "A new card arrives in 3 to 5 working days.",
            "Reset a forgotten PIN at any cash machine with your card.",
            "Card fees abroad: none in the eurozone.",
            "Savings accounts pay interest monthly."]

RETRIEVE_RERANK = """
[[inputs]]
name = "question"
datatype = "BYTES"
shape = [-1]

[[steps]]
name = "search"
model = "passages"
inputs = { text = "question" }

[[steps]]
name = "texts"
op = "json_text"
field = "text"
inputs = ["search.payloads"]

[[steps]]
name = "rerank"
model = "bert-reranker"
inputs = { query = "question", document = "texts.output" }

[[steps]]
name = "top"
op = "top_k"
k = 2
inputs = ["rerank.score"]

[[steps]]
name = "picked"
op = "gather"
inputs = ["search.ids", "top.indices"]

[[outputs]]
name = "ids"
from = "picked.output"

[[outputs]]
name = "scores"
from = "top.values"
"""


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory):
    repo = tmp_path_factory.mktemp("rerank") / "models"
    weights = {family: make_cross_encoder(repo / f"{family}-reranker" / "1", family, seed)
               for seed, family in enumerate(("bert", "roberta"))}
    # A keyword-searched collection and a pipeline that retrieves, reranks and keeps the best 2.
    (repo / "passages").mkdir()
    (repo / "passages" / "config.toml").write_text(
        'kind = "vector_index"\n[index]\ndim = 2\nmetric = "cosine"\nexact = true\ntext_field = "text"\nk = 4\n')
    (repo / "passages" / "points.jsonl").write_text("".join(
        json.dumps({"id": f"d{i}", "vector": [1.0, float(i)], "payload": {"text": t}}) + "\n"
        for i, t in enumerate(PASSAGES)))
    (repo / "retrieve_rerank").mkdir()
    (repo / "retrieve_rerank" / "pipeline.toml").write_text(RETRIEVE_RERANK)
    server = KilnServer(repo)
    yield server, weights
    assert server.stop() == 0


def expected(weights, family):
    tok = Tokenizer.from_file(str(DEMO_MINILM / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(POSITIONS - (0 if family == "bert" else 2))
    out = []
    for doc in DOCUMENTS:
        e = tok.encode(QUERY, doc)
        out.append(numpy_logit(weights[family], family, np.array(e.ids), np.array(e.type_ids)))
    return np.array(out)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_scores_equal_a_numpy_forward_pass(rerankers, family):
    server, weights = rerankers
    want = expected(weights, family)
    r = requests.post(f"http://{server.url}/v1/rerank", timeout=30, json={
        "model": f"{family}-reranker", "query": QUERY, "documents": DOCUMENTS, "raw_scores": True,
        "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    got = {x["index"]: x["relevance_score"] for x in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], want, rtol=1e-4, atol=1e-4)
    # Best first, each with its document.
    assert [x["index"] for x in body["results"]] == list(np.argsort(-want, kind="stable"))
    assert all(x["document"]["text"] == DOCUMENTS[x["index"]] for x in body["results"])
    assert body["usage"]["total_tokens"] > 0
    models = requests.get(f"http://{server.url}/v1/models", timeout=10).json()["data"]
    assert {"id": f"{family}-reranker", "kind": "rerank"}.items() <= next(
        m for m in models if m["id"] == f"{family}-reranker").items()

    # Default scores go through a sigmoid (sentence-transformers' CrossEncoder, TEI); top_n cuts.
    r = requests.post(f"http://{server.url}/v1/rerank", timeout=30, json={
        "model": f"{family}-reranker", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2})
    top = r.json()["results"]
    assert len(top) == 2 and "document" not in top[0]
    np.testing.assert_allclose([x["relevance_score"] for x in top],
                               1 / (1 + np.exp(-np.sort(want)[::-1][:2])), rtol=1e-4)


def test_tei_shape(rerankers):
    server, weights = rerankers
    want = expected(weights, "bert")
    r = requests.post(f"http://{server.url}/rerank", timeout=30, json={
        "model": "bert-reranker", "query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list) and set(body[0]) == {"index", "score", "text"}
    np.testing.assert_allclose(sorted(x["score"] for x in body), sorted(want), rtol=1e-4, atol=1e-4)


def test_bad_rerank_requests_are_clear_4xx(rerankers, tmp_path):
    server, _ = rerankers
    url = f"http://{server.url}/v1/rerank"
    cases = [
        ({"model": "bert-reranker", "query": QUERY, "documents": []}, 400, "'documents' is an empty list", "documents"),
        ({"model": "bert-reranker", "query": "", "documents": ["x"]}, 400, "'query' is an empty string", "query"),
        ({"model": "bert-reranker", "query": QUERY, "documents": ["x", ""]}, 400, "'documents'[1] is an empty", "documents"),
        ({"model": "bert-reranker", "query": QUERY, "documents": ["x"], "top_n": 0}, 400, "'top_n'", "top_n"),
        ({"model": "bert-reranker", "query": QUERY, "documents": [1]}, 400, "'documents'[0]", "documents"),
        ({"query": QUERY, "documents": ["x"]}, 400, "'model' is required", "model"),
        ({"model": "bert-reranker", "query": QUERY, "documents": ["x"] * 1025}, 413, "at most 1024", "documents"),
        ({"model": "nope", "query": QUERY, "documents": ["x"]}, 404, "nope", None),
        ({"model": "bert-reranker", "query": QUERY, "documents": ["x"], "colour": 1}, 400, "colour", "body"),
    ]
    for body, status, words, param in cases:
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert words in error["message"], (words, error)
        assert error.get("param") == param, error
    assert requests.get(f"http://{server.url}/v2/health/ready", timeout=5).status_code == 200


def test_a_pipeline_retrieves_then_reranks(rerankers):
    server, _ = rerankers
    questions = ["my card was stolen", "interest on savings", "zebra"]
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("question", [len(questions)], "BYTES")
    inp.set_data_from_numpy(np.array([q.encode() for q in questions], dtype=object))
    result = client.infer("retrieve_rerank", [inp])
    ids, scores = result.as_numpy("ids"), result.as_numpy("scores")
    assert ids.shape == (3, 2) and scores.shape == (3, 2)
    for row, question in enumerate(questions):
        found = requests.post(f"http://{server.url}/v1/collections/passages/search", timeout=10,
                              json={"text": question, "k": 4}).json()["results"]
        if not found:  # nothing to rerank: the padding scores -inf and keeps its empty ids
            assert list(ids[row]) == [b"", b""] and np.isneginf(scores[row]).all()
            continue
        ranked = requests.post(f"http://{server.url}/v1/rerank", timeout=10, json={
            "model": "bert-reranker", "query": question, "documents": [h["payload"]["text"] for h in found],
            "raw_scores": True}).json()["results"]
        want = [found[r["index"]]["id"].encode() for r in ranked[:2]]
        assert [x for x in ids[row] if x] == want[:len([x for x in ids[row] if x])], (question, ids[row], want)
        np.testing.assert_allclose(scores[row][:len(ranked[:2])], [r["relevance_score"] for r in ranked[:2]], rtol=1e-5)

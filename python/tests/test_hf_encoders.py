"""Encoder families from Hugging Face folders beyond BERT: tiny MPNetModel, XLMRobertaModel and
DistilBertModel folders with random weights, written here as safetensors with sentence-transformers' files,
served by kiln as they are; /v1/embeddings equals a numpy forward pass (mean pooling,
normalized) of the same weights on the same tokens."""

import json

import numpy as np
import pytest
import requests
from scipy.special import erf
from tokenizers import Tokenizer

from conftest import DEMO_MINILM, HAVE_MINILM, NO_MINILM, KilnServer, link_file
from test_rerank import write_safetensors

pytestmark = pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM)  # its tokenizer.json is reused

H, HEADS, LAYERS, INNER, POSITIONS, VOCAB, BUCKETS = 32, 4, 2, 64, 80, 30522, 32


def make_encoder(folder, family, seed):
    rng = np.random.default_rng(seed)
    w = {}

    def put(name, *shape, scale=0.2, plus=0.0):
        w[name] = (rng.standard_normal(shape) * scale + plus).astype(np.float32)

    put("embeddings.word_embeddings.weight", VOCAB, H)
    put("embeddings.position_embeddings.weight", POSITIONS, H)
    if family == "xlm-roberta":
        put("embeddings.token_type_embeddings.weight", 1, H)
    put("embeddings.LayerNorm.weight", H, plus=1.0)
    put("embeddings.LayerNorm.bias", H)
    if family == "mpnet":
        put("encoder.relative_attention_bias.weight", BUCKETS, HEADS, scale=1.0)
    names, blocks = NAMES[family]
    for layer in range(LAYERS):
        p = f"{blocks}.{layer}."
        for part in names[:4]:
            put(p + part + ".weight", H, H)
            put(p + part + ".bias", H)
        put(p + names[4] + ".weight", H, plus=1.0)
        put(p + names[4] + ".bias", H)
        put(p + names[5] + ".weight", INNER, H)
        put(p + names[5] + ".bias", INNER)
        put(p + names[6] + ".weight", H, INNER)
        put(p + names[6] + ".bias", H)
        put(p + names[7] + ".weight", H, plus=1.0)
        put(p + names[7] + ".bias", H)
    folder.mkdir(parents=True)
    if family == "distilbert":  # DistilBERT's own key names, its fixed 1e-12 epsilon
        config = {"architectures": ["DistilBertModel"], "model_type": family, "dim": H, "n_heads": HEADS,
                  "n_layers": LAYERS, "hidden_dim": INNER, "activation": "gelu",
                  "max_position_embeddings": POSITIONS, "pad_token_id": 0}
    else:
        config = {"architectures": ["MPNetModel" if family == "mpnet" else "XLMRobertaModel"], "model_type": family,
                  "hidden_size": H, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
                  "intermediate_size": INNER, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
                  "max_position_embeddings": POSITIONS, "pad_token_id": 1, "relative_attention_num_buckets": BUCKETS}
    if family == "xlm-roberta":
        config["type_vocab_size"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", w)
    link_file(DEMO_MINILM / "tokenizer.json", folder / "tokenizer.json")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": H, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return w


BERT_NAMES = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"]
NAMES = {
    "mpnet": (["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm",
               "intermediate.dense", "output.dense", "output.LayerNorm"], "encoder.layer"),
    "xlm-roberta": (BERT_NAMES, "encoder.layer"),
    "distilbert": (["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm",
                    "ffn.lin1", "ffn.lin2", "output_layer_norm"], "transformer.layer"),
}


def relative_bucket(relative, buckets=BUCKETS, max_distance=128):
    """transformers' MPNet (T5) bucket, in float32 as torch computes it."""
    half = buckets // 2
    n = -relative
    ret = np.where(n < 0, half, 0)
    n = np.abs(n)
    exact = half // 2
    # (n = 0 is small: its log is never used)
    large = exact + (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact))
                     / np.float32(np.log(max_distance / exact)) * np.float32(half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < exact, n, large)


def numpy_states(w, family, ids):
    n = len(ids)
    g = lambda name: w[name].astype(np.float64)  # noqa: E731

    eps = 1e-12 if family == "distilbert" else 1e-5

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g(name + ".weight") + g(name + ".bias")

    def linear(x, name):
        return x @ g(name + ".weight").T + g(name + ".bias")

    offset = 0 if family == "distilbert" else 2
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[offset:offset + n]
    if family == "xlm-roberta":
        x = x + g("embeddings.token_type_embeddings.weight")[0]
    x = ln(x, "embeddings.LayerNorm")
    bias = 0.0
    if family == "mpnet":
        rel = np.arange(n)[None, :] - np.arange(n)[:, None]
        bias = g("encoder.relative_attention_bias.weight")[relative_bucket(rel)].transpose(2, 0, 1)
    names, blocks = NAMES[family]
    hd = H // HEADS
    for layer in range(LAYERS):
        p = f"{blocks}.{layer}."
        q, k, v = (linear(x, p + t).reshape(n, HEADS, hd).transpose(1, 0, 2) for t in names[:3])
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        x = ln(linear(ctx.transpose(1, 0, 2).reshape(n, H), p + names[3]) + x, p + names[4])
        up = linear(x, p + names[5])
        up = 0.5 * up * (1 + erf(up / np.sqrt(2)))
        x = ln(linear(up, p + names[6]) + x, p + names[7])
    return x


def numpy_embedding(w, family, ids):
    e = numpy_states(w, family, ids).mean(0)
    return e / np.linalg.norm(e)


TEXTS = ["a short one", "Passwörter können in der App geändert werden — naïve café 🚀",
         "word " * 100,  # truncated to max_seq_length 48
         "the quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps again"]


@pytest.mark.parametrize("family", ["mpnet", "xlm-roberta", "distilbert"])
def test_embeddings_equal_a_numpy_forward_pass(tmp_path, family):
    repo = tmp_path / "models"
    w = make_encoder(repo / "enc" / "1", family, seed=3)
    server = KilnServer(repo)
    try:
        r = requests.post(f"http://{server.url}/v1/embeddings", json={"model": "enc", "input": TEXTS}, timeout=30)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
    finally:
        assert server.stop() == 0
    tok = Tokenizer.from_file(str(DEMO_MINILM / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(48)
    want = np.array([numpy_embedding(w, family, np.array(tok.encode(t).ids)) for t in TEXTS])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_distilbert_cross_encoder_scores_like_numpy(tmp_path):
    """DistilBertForSequenceClassification: CLS state -> pre_classifier -> ReLU -> classifier."""
    repo = tmp_path / "models"
    folder = repo / "rr" / "1"
    w = make_encoder(folder, "distilbert", seed=5)
    rng = np.random.default_rng(9)
    for name, shape in (("pre_classifier.weight", (H, H)), ("pre_classifier.bias", (H,)),
                        ("classifier.weight", (1, H)), ("classifier.bias", (1,))):
        w[name] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    write_safetensors(folder / "model.safetensors", w)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["DistilBertForSequenceClassification"], id2label={"0": "LABEL_0"})
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    server = KilnServer(repo)
    try:
        r = requests.post(f"http://{server.url}/v1/rerank", timeout=30,
                          json={"query": "reset my password", "documents": TEXTS, "raw_scores": True})
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    finally:
        assert server.stop() == 0
    tok = Tokenizer.from_file(str(DEMO_MINILM / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(POSITIONS)
    for i, text in enumerate(TEXTS):
        cls = numpy_states(w, "distilbert", np.array(tok.encode("reset my password", text).ids))[0]
        hidden = np.maximum(cls @ w["pre_classifier.weight"].T.astype(np.float64) + w["pre_classifier.bias"], 0)
        want = (hidden @ w["classifier.weight"].T.astype(np.float64) + w["classifier.bias"])[0]
        assert abs(got[i] - want) < 1e-4, (i, got[i], want)

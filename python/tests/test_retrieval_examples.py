"""The demo repository's retrieval examples end to end through the real `kiln` binary:
`recommend` (200 candidates from the `items` collection, ranked by an exported GBM, top 10)
equals the Python prototype's answer in the fixture, over REST and gRPC with tritonclient; and
`support_answer` (MiniLM retrieval from `help_center`, a `format` prompt, the local SmolLM2)
answers from the right passages."""

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import HAVE_MINILM, NO_MINILM


def users(fixture, rows):
    return np.array(fixture("recommend")["inputs"][:rows], dtype=np.float32)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_recommend_equals_the_python_prototype(kiln, fixture, protocol):
    expected = fixture("recommend")
    x = np.array(expected["inputs"], dtype=np.float32)
    lib = httpclient if protocol == "rest" else grpcclient
    client = lib.InferenceServerClient(kiln.url if protocol == "rest" else kiln.grpc_url)
    inp = lib.InferInput("user", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("recommend", [inp])
    items = result.as_numpy("items")
    scores = result.as_numpy("scores")
    assert items.shape == (len(x), 10) and scores.shape == (len(x), 10)
    got = [[i.decode() for i in row] for row in items]
    # Exact candidates (the catalogue is searched exactly), the same ranker on ONNX Runtime:
    # the same ten items in the same order, the same probabilities to float32 rounding.
    assert got == expected["items"]
    np.testing.assert_allclose(scores, np.array(expected["scores"]), rtol=0, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all(), "best first"


def test_recommend_says_what_is_wrong(kiln, fixture):
    base = f"http://{kiln.url}/v2/models/recommend/infer"
    wrong_dim = {"inputs": [{"name": "user", "datatype": "FP32", "shape": [1, 8], "data": [0.1] * 8}]}
    r = requests.post(base, json=wrong_dim, timeout=10)
    assert r.status_code == 400 and "user" in r.json()["error"] and "16" in r.json()["error"], r.text
    x = users(fixture, 1)[0].tolist()
    x[3] = None  # NaN in JSON
    r = requests.post(base, json={"inputs": [{"name": "user", "datatype": "FP32", "shape": [1, 16], "data": x}]},
                      timeout=10)
    assert r.status_code == 400 and "NaN" in r.json()["error"], r.text
    # The collection behind it still answers: the items' payloads carry what the ranker read.
    r = requests.post(f"http://{kiln.url}/v1/collections/items/search",
                      json={"vector": users(fixture, 1)[0].tolist(), "k": 3}, timeout=10)
    assert r.status_code == 200, r.text
    hit = r.json()["results"][0]
    assert set(hit["payload"]) == {"title", "category", "popularity", "price"}


@pytest.mark.skipif(not HAVE_MINILM, reason=NO_MINILM)
def test_support_answer_retrieves_the_right_passages_and_answers(kiln):
    questions = ["I lost my card, what should I do?", "How long does a transfer to another bank take?",
                 "I forgot my PIN"]
    client = httpclient.InferenceServerClient(kiln.url, network_timeout=120)
    inp = httpclient.InferInput("question", [len(questions)], "BYTES")
    inp.set_data_from_numpy(np.array(questions, dtype=object))
    result = client.infer("support_answer", [inp])
    sources = result.as_numpy("sources")
    scores = result.as_numpy("scores")
    answers = [a.decode() for a in result.as_numpy("answer")]
    assert sources.shape == (3, 3) and scores.shape == (3, 3)
    assert [s[0].decode() for s in sources] == ["card-lost", "transfer-time", "pin-reset"]
    assert (np.diff(scores, axis=1) <= 0).all() and (scores[:, 0] > 0.4).all()
    # What the model writes is the model's (SmolLM2-135M, greedy): it answers every row.
    assert all(len(a.strip()) > 10 for a in answers), answers
    # The collection alone answers the same first passage over REST, with its payload.
    r = requests.post(f"http://{kiln.url}/v1/collections/help_center/search",
                      json={"text": questions[0], "k": 1}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == "card-lost"
    assert "Freeze" in r.json()["results"][0]["payload"]["text"]

"""Pipelines (pipeline.toml) against the real binary: the fraud ensemble equals the
combination computed by hand from its models, independent steps overlap in time, kiln_trace,
gRPC, and graph validation errors reported in the repository index."""

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, KilnServer
from test_scheduler import slow_model

SLOW_PAIR = """
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 1]

[[steps]]
name = "a"
model = "slow_a"
inputs = { x = "x" }

[[steps]]
name = "b"
model = "slow_b"
inputs = { x = "x" }

[[steps]]
name = "avg"
op = "mean"
inputs = ["a.y", "b.y"]

[[outputs]]
name = "y"
from = "avg.output"
"""

BROKEN = {
    "bad_ref": ('[[inputs]]\nname="input"\ndatatype="FP32"\nshape=[-1,30]\n'
                '[[steps]]\nname="s"\nop="softmax"\ninputs=["nowhere.output"]\n'
                '[[outputs]]\nname="o"\nfrom="s.output"\n', "step 's' reads 'nowhere.output', but there is no step 'nowhere'"),
    "cycle": ('[[inputs]]\nname="input"\ndatatype="FP32"\nshape=[-1,30]\n'
              '[[steps]]\nname="p"\nop="softmax"\ninputs=["q.output"]\n'
              '[[steps]]\nname="q"\nop="softmax"\ninputs=["p.output"]\n'
              '[[outputs]]\nname="o"\nfrom="q.output"\n', 'the steps ["p", "q"] form a cycle'),
    "dtype_mismatch": ('[[inputs]]\nname="input"\ndatatype="FP32"\nshape=[-1,30]\n'
                       '[[steps]]\nname="g"\nmodel="fraud"\ninputs={input="input"}\n'
                       '[[steps]]\nname="l"\nmodel="fraud_lr"\ninputs={input="g.label"}\n'
                       '[[outputs]]\nname="o"\nfrom="l.label"\n',
                       "step 'l': model 'fraud_lr' input 'input' expects FP32 [-1, 30], but gets INT64 [-1]"),
    "unknown_model": ('[[inputs]]\nname="input"\ndatatype="FP32"\nshape=[-1,30]\n'
                      '[[steps]]\nname="g"\nmodel="nope"\ninputs={input="input"}\n'
                      '[[outputs]]\nname="o"\nfrom="g.label"\n', "step 'g': model 'nope': unknown model 'nope'"),
    "op_types": ('[[inputs]]\nname="input"\ndatatype="FP32"\nshape=[-1,30]\n'
                 '[[steps]]\nname="g"\nmodel="fraud"\ninputs={input="input"}\n'
                 '[[steps]]\nname="s"\nop="softmax"\ninputs=["g.label"]\n'
                 '[[outputs]]\nname="o"\nfrom="s.output"\n', "step 's': softmax needs FP32, input 'label' is INT64"),
}

VOTE = """
[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 30]

[[steps]]
name = "gbc"
model = "fraud"
inputs = { input = "input" }

[[steps]]
name = "lr"
model = "fraud_lr"
inputs = { input = "input" }

[[steps]]
name = "top"
op = "argmax"
inputs = ["gbc.probabilities"]

[[steps]]
name = "vote"
op = "majority_vote"
inputs = ["gbc.label", "lr.label", "top.output"]

[[outputs]]
name = "label"
from = "vote.output"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipelines") / "models"
    for name in ("fraud", "fraud_lr", "fraud_ensemble"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    for name in ("slow_a", "slow_b"):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(slow_model(448))
    (repo / "slow_pair").mkdir()
    (repo / "slow_pair" / "pipeline.toml").write_text(SLOW_PAIR)
    (repo / "vote").mkdir()
    (repo / "vote" / "pipeline.toml").write_text(VOTE)
    for name, (text, _) in BROKEN.items():
        (repo / name).mkdir()
        (repo / name / "pipeline.toml").write_text(text)
    s = KilnServer(repo)
    yield s
    assert s.stop() == 0


def infer(client, model, x, name="input"):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], parameters={"kiln_trace": True})


def test_ensemble_equals_the_hand_combination(server, fixture):
    client = httpclient.InferenceServerClient(url=server.url)
    x = np.asarray(fixture("fraud")["inputs"], dtype=np.float32)
    p_gbc = infer(client, "fraud", x).as_numpy("probabilities").astype(np.float64)
    p_lr = infer(client, "fraud_lr", x).as_numpy("probabilities").astype(np.float64)
    blend = 0.7 * p_gbc + 0.3 * p_lr
    result = infer(client, "fraud_ensemble", x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), blend, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("score")[:, 0], blend[:, 1], atol=1e-6)
    assert result.as_numpy("label").tolist() == (blend[:, 1] >= 0.5).astype(int).tolist()
    meta = client.get_model_metadata("fraud_ensemble")
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "probabilities"]
    params = result.get_response()["parameters"]
    assert {"gbc", "lr", "blend", "decide", "fraud_score"} == {k.split(".")[1] for k in params if k.startswith("kiln_trace.")}
    # gRPC serves the pipeline too.
    g = grpcclient.InferenceServerClient(url=server.grpc_url)
    gi = grpcclient.InferInput("input", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    np.testing.assert_allclose(g.infer("fraud_ensemble", [gi]).as_numpy("probabilities"), blend, atol=1e-6)


def test_majority_vote(server, fixture):
    client = httpclient.InferenceServerClient(url=server.url)
    x = np.asarray(fixture("fraud")["inputs"], dtype=np.float32)
    gbc = infer(client, "fraud", x).as_numpy("label")
    lr = infer(client, "fraud_lr", x).as_numpy("label")
    top = infer(client, "fraud", x).as_numpy("probabilities").argmax(1)
    want = [int(np.bincount([a, b, c]).argmax()) for a, b, c in zip(gbc, lr, top)]
    assert infer(client, "vote", x).as_numpy("label").tolist() == want


def test_independent_steps_overlap_in_time(server):
    client = httpclient.InferenceServerClient(url=server.url)
    x = np.ones((1, 1), np.float32)
    result = infer(client, "slow_pair", x, name="x")
    assert result.as_numpy("y").shape == (1, 1)
    p = result.get_response()["parameters"]
    a = (p["kiln_trace.a.start_us"], p["kiln_trace.a.start_us"] + p["kiln_trace.a.duration_us"])
    b = (p["kiln_trace.b.start_us"], p["kiln_trace.b.start_us"] + p["kiln_trace.b.duration_us"])
    assert a[0] < b[1] and b[0] < a[1], f"steps a {a} and b {b} did not overlap"
    avg = p["kiln_trace.avg.start_us"]
    assert avg >= max(a[1], b[1]), "a step must start after the steps it reads"


def test_graph_errors_are_load_errors_with_precise_messages(server):
    client = httpclient.InferenceServerClient(url=server.url)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    for name, (_, needle) in BROKEN.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        assert needle in index[name]["reason"], (name, index[name]["reason"])
    assert index["fraud_ensemble"]["state"] == "READY"


def test_bad_input_names_the_pipeline_input(server):
    client = httpclient.InferenceServerClient(url=server.url)
    with pytest.raises(Exception) as err:
        infer(client, "fraud_ensemble", np.zeros((1, 3), np.float32))
    assert "input 'input': expected shape [-1, 30]" in str(err.value)

"""Triton's own HTTP client (tritonclient 2.73) against `kiln serve`."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(kiln):
    c = httpclient.InferenceServerClient(url=kiln.url)
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert client.is_model_ready("fixed_add", "2")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta["name"] == "kiln"
    model = client.get_model_metadata("fraud")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    assert model["outputs"][1]["labels"] == ["legit", "fraud"]
    index = client.get_model_repository_index()
    states = {(row["name"], row.get("version")): row["state"] for row in index}
    assert states[("fraud", "1")] == "READY"
    assert states[("broken", "1")] == "UNAVAILABLE"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", ["fraud", "breast_cancer", "digits_mlp", "iris"])
def test_infer_matches_scikit_learn(client, fixture, name, binary):
    fx = fixture(name)
    x = np.asarray(fx["inputs"], dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(name, [inp], request_id="r-1")
    meta = client.get_model_metadata(name)
    label_name, proba_name = (o["name"] for o in meta["outputs"])
    labels = result.as_numpy(label_name)
    proba = result.as_numpy(proba_name)
    expected_labels = [str(v) for v in fx["labels"]]
    got_labels = [v.decode() if isinstance(v, bytes) else str(v) for v in labels.tolist()]
    assert got_labels == expected_labels
    np.testing.assert_allclose(proba, np.asarray(fx["probabilities"]), atol=1e-5, rtol=0)
    assert result.get_response()["id"] == "r-1"


@pytest.mark.parametrize("binary_output", [True, False])
def test_requested_outputs(client, fixture, binary_output):
    fx = fixture("fraud")
    x = np.asarray(fx["inputs"][:5], dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_output)
    result = client.infer("fraud", [inp], outputs=[out])
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.asarray(fx["probabilities"][:5]), atol=1e-5)


def test_every_datatype(client):
    types = {
        "BOOL": np.array([[True, False, True], [False, False, True]]),
        "UINT8": np.array([[0, 1, 255], [3, 4, 5]], dtype=np.uint8),
        "UINT16": np.array([[0, 1, 65535], [3, 4, 5]], dtype=np.uint16),
        "UINT32": np.array([[0, 1, 2**32 - 1], [3, 4, 5]], dtype=np.uint32),
        "UINT64": np.array([[0, 1, 2**64 - 1], [3, 4, 5]], dtype=np.uint64),
        "INT8": np.array([[-128, 1, 127], [3, 4, 5]], dtype=np.int8),
        "INT16": np.array([[-32768, 1, 32767], [3, 4, 5]], dtype=np.int16),
        "INT32": np.array([[-(2**31), 1, 2**31 - 1], [3, 4, 5]], dtype=np.int32),
        "INT64": np.array([[-(2**63), 1, 2**63 - 1], [3, 4, 5]], dtype=np.int64),
        "FP16": np.array([[0.5, -1, 65504], [3, 4, 5]], dtype=np.float16),
        "FP32": np.array([[0.5, -1, 3.4e38], [3, 4, 5]], dtype=np.float32),
        "FP64": np.array([[0.5, -1, 1e300], [3, 4, 5]], dtype=np.float64),
        "BYTES": np.array([[b"a", b"", "h\u00e9llo".encode()], ["\U0001f642".encode(), b"x", b"y z"]], dtype=np.object_),
    }
    for binary in (True, False):
        inputs = []
        for dt, arr in types.items():
            inp = httpclient.InferInput(f"in_{dt.lower()}", list(arr.shape), dt)
            inp.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(inp)
        result = client.infer("all_types", inputs)
        for dt, arr in types.items():
            got = result.as_numpy(f"out_{dt.lower()}")
            assert got.shape == arr.shape, dt
            if dt == "BYTES":
                assert got.tolist() == arr.tolist(), dt
            else:
                np.testing.assert_array_equal(got, arr, err_msg=f"{dt} binary={binary}")


def test_nan_and_infinity_round_trip_over_json(client, kiln):
    """tritonclient with binary_data=False sends NaN/Infinity as Python's json writes them
    (bare tokens); kiln reads them, and answers them the same way (as Triton does), not null."""
    import json
    import urllib.request

    floats = {
        "FP16": np.array([[np.nan, np.inf, -np.inf], [1, 2, 3]], dtype=np.float16),
        "FP32": np.array([[np.nan, np.inf, -np.inf], [0.5, -1, 3]], dtype=np.float32),
        "FP64": np.array([[np.nan, np.inf, -np.inf], [0.5, -1, 1e300]], dtype=np.float64),
    }
    others = {
        "BOOL": np.array([[True, False, True], [False, False, True]]),
        "UINT8": np.zeros((2, 3), dtype=np.uint8), "UINT16": np.zeros((2, 3), dtype=np.uint16),
        "UINT32": np.zeros((2, 3), dtype=np.uint32), "UINT64": np.zeros((2, 3), dtype=np.uint64),
        "INT8": np.zeros((2, 3), dtype=np.int8), "INT16": np.zeros((2, 3), dtype=np.int16),
        "INT32": np.zeros((2, 3), dtype=np.int32), "INT64": np.zeros((2, 3), dtype=np.int64),
        "BYTES": np.array([[b"NaN", b"Infinity", b"-Infinity"], [b"a", b"b", b"c"]], dtype=np.object_),
    }
    tensors = {**floats, **others}
    inputs, outputs = [], []
    for dt, arr in tensors.items():
        inp = httpclient.InferInput(f"in_{dt.lower()}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=False)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{dt.lower()}", binary_data=False))
    result = client.infer("all_types", inputs, outputs=outputs)
    for dt, arr in tensors.items():
        got = result.as_numpy(f"out_{dt.lower()}")
        if dt == "BYTES":  # tritonclient hands JSON strings back as str
            assert got.tolist() == [[x.decode() for x in row] for row in arr.tolist()]
        else:
            np.testing.assert_array_equal(got, arr, err_msg=dt)
    # On the wire: bare tokens in the answer, strings left alone.
    body = {"inputs": [{"name": "in_fp32", "shape": [1, 3], "datatype": "FP32", "data": [float("nan"), float("inf"), float("-inf")]}],
            "outputs": [{"name": "out_fp32"}]}
    for dt, arr in others.items():
        body["inputs"].append({"name": f"in_{dt.lower()}", "shape": [1, 3], "datatype": dt,
                               "data": [x.decode() if isinstance(x, bytes) else x.item() for x in arr[0]]})
    for dt in ("FP16", "FP64"):
        body["inputs"].append({"name": f"in_{dt.lower()}", "shape": [1, 3], "datatype": dt, "data": [1, 2, 3]})
    request = urllib.request.Request(f"http://{kiln.url}/v2/models/all_types/infer", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request) as r:
        text = r.read().decode()
    assert '"data":[NaN,Infinity,-Infinity]' in text, text
    assert json.loads(text)["outputs"][0]["datatype"] == "FP32"


def test_bad_shape_is_a_clear_error(client):
    x = np.zeros((2, 29), dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer("fraud", [inp])
    assert "input 'input': expected shape [-1, 30] (-1 = any size), got [2, 29]" in str(err.value)
    assert err.value.status() == "400"


def test_wrong_datatype_and_unknown_model(client):
    x = np.zeros((1, 30), dtype=np.float64)
    inp = httpclient.InferInput("input", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer("fraud", [inp])
    assert "expected datatype FP32, got FP64" in str(err.value)
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [inp])
    assert "unknown model 'nope'" in str(err.value)
    assert err.value.status() == "404"


def test_model_config(client):
    config = client.get_model_config("fraud")
    assert config["name"] == "fraud"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 30]}]
    assert config["output"][1]["labels"] == ["legit", "fraud"]
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert client.get_model_config("iris", "1")["output"][0]["data_type"] == "TYPE_STRING"

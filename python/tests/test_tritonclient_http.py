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

"""Triton's own gRPC client (tritonclient 2.73) against `kiln serve`."""

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(kiln):
    c = grpcclient.InferenceServerClient(url=kiln.grpc_url)
    yield c
    c.close()


def fraud_input(fixture, rows=8):
    x = np.asarray(fixture("fraud")["inputs"][:rows], dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert client.is_model_ready("fixed_add", "2")
    assert not client.is_model_ready("fixed_add", "1")
    assert not client.is_model_ready("broken")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "kiln"
    assert "statistics" in meta["extensions"]
    model = client.get_model_metadata("fraud", as_json=True)
    assert model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "30"]}]


@pytest.mark.parametrize("name", ["fraud", "breast_cancer", "digits_mlp", "iris"])
def test_infer_matches_scikit_learn(client, fixture, name):
    fx = fixture(name)
    x = np.asarray(fx["inputs"], dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp], request_id="g-1")
    outputs = result.get_response(as_json=True)["outputs"]
    labels = result.as_numpy(outputs[0]["name"])
    proba = result.as_numpy(outputs[1]["name"])
    got = [v.decode() if isinstance(v, bytes) else str(v) for v in labels.tolist()]
    assert got == [str(v) for v in fx["labels"]]
    np.testing.assert_allclose(proba, np.asarray(fx["probabilities"]), atol=1e-5, rtol=0)
    assert result.get_response().id == "g-1"


def test_int64_and_bytes_and_every_type(client):
    types = {
        "BOOL": np.array([[True, False, True]]),
        "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
        "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
        "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
        "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
        "INT8": np.array([[-128, 7, 127]], dtype=np.int8),
        "INT16": np.array([[-32768, 7, 32767]], dtype=np.int16),
        "INT32": np.array([[-(2**31), 7, 2**31 - 1]], dtype=np.int32),
        "INT64": np.array([[-(2**63), 7, 2**63 - 1]], dtype=np.int64),
        "FP16": np.array([[0.5, -1, 65504]], dtype=np.float16),
        "FP32": np.array([[0.5, -1, 3.4e38]], dtype=np.float32),
        "FP64": np.array([[0.5, -1, 1e300]], dtype=np.float64),
        "BYTES": np.array([[b"a", "h\u00e9".encode(), b""]], dtype=np.object_),
    }
    inputs = []
    for dt, arr in types.items():
        inp = grpcclient.InferInput(f"in_{dt.lower()}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer("all_types", inputs)
    for dt, arr in types.items():
        got = result.as_numpy(f"out_{dt.lower()}")
        if dt == "BYTES":
            assert got.tolist() == arr.tolist()
        else:
            np.testing.assert_array_equal(got, arr, err_msg=dt)


def test_streaming_infer_in_order_with_errors_in_band(client, fixture):
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    fx = fixture("fraud")
    try:
        for i in range(20):
            if i == 7:
                bad = grpcclient.InferInput("input", [1, 3], "FP32")
                bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
                client.async_stream_infer("fraud", [bad], request_id=f"s-{i}")
                continue
            x = np.asarray(fx["inputs"][i : i + 1], dtype=np.float32)
            inp = grpcclient.InferInput("input", [1, 30], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("fraud", [inp], request_id=f"s-{i}")
        answers = [results.get(timeout=10) for _ in range(20)]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(answers):
        if i == 7:
            assert result is None
            assert "expected shape [-1, 30]" in str(error)
            continue
        assert error is None, error
        assert result.get_response().id == f"s-{i}"
        assert int(result.as_numpy("label")[0]) == fx["labels"][i]


def test_error_codes(client, fixture):
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [fraud_input(fixture)])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in err.value.message()

    bad = grpcclient.InferInput("input", [2, 29], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 29), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("fraud", [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input': expected shape [-1, 30] (-1 = any size), got [2, 29]" in err.value.message()

    with pytest.raises(InferenceServerException) as err:
        client.infer("broken", [fraud_input(fixture)])
    assert err.value.status() == "StatusCode.UNAVAILABLE"

    with pytest.raises(InferenceServerException) as err:
        client.load_model("fraud")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "--model-control explicit" in err.value.message()


def test_typed_contents_are_accepted(kiln):
    """Clients other than tritonclient may send typed `contents` instead of raw bytes."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(kiln.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="fixed_add")
    for name in ("a", "b"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[2, 3])
        tensor.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["sum", "product"]
    total = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(total, [2, 4, 6, 8, 10, 12])

    narrow = service_pb2.ModelInferRequest(model_name="all_types")
    t = narrow.inputs.add(name="in_uint8", datatype="UINT8", shape=[1, 3])
    t.contents.uint_contents.extend([1, 2, 300])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(narrow)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 2 (300) is out of range for UINT8" in err.value.details()
    channel.close()


def test_statistics(client, fixture):
    before = client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]
    x = np.asarray(fixture("digits_mlp")["inputs"][:5], dtype=np.float32)
    for _ in range(3):
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("digits_mlp", [inp])
    after = client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))
    assert success(after) - success(before) == 3
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 15
    assert int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)) == 3
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "fraud", "version": "1", "state": "READY"} in index


def test_model_config_over_grpc_matches_http(client, kiln):
    """tritonclient's get_model_config over gRPC (Triton's ModelConfig RPC) answers what the
    HTTP config endpoint answers, for every ready model."""
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(url=kiln.url)
    ready = [m["name"] for m in http.get_model_repository_index() if m.get("state") == "READY"]
    assert "fraud" in ready and "iris" in ready
    for name in sorted(set(ready)):
        want = http.get_model_config(name)
        got = client.get_model_config(name).config
        assert got.name == want["name"] == name
        assert (got.platform, got.backend) == (want["platform"], want["backend"])
        assert got.max_batch_size == want["max_batch_size"]
        for ours, theirs in ((got.input, want["input"]), (got.output, want["output"])):
            assert [(t.name, grpcclient.model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in ours] == [
                (t["name"], t["data_type"], t["dims"]) for t in theirs
            ], name
        assert [(g.count, grpcclient.model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in got.instance_group] == [
            (g["count"], g["kind"]) for g in want["instance_group"]
        ]
        assert got.HasField("dynamic_batching") == ("dynamic_batching" in want), name
    http.close()
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"

"""config.toml's `batch_dimension = true`: an output that the model file fixes at [1] (as
onnxmltools' LightGBM export declares `label`) served as the batch dimension, so batching can
be turned on; checked at load with a two-row warm-up."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from conftest import KilnServer


def row_sum_model(declared_label_shape, keep_rows=True):
    """x [batch, 3] -> label = sum of each row, declared with `declared_label_shape`. With
    keep_rows=False the model really answers one number whatever the batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    label = helper.make_tensor_value_info("label", TensorProto.FLOAT, declared_label_shape)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1] if keep_rows else [0])
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["per_row"], keepdims=0)]
    if keep_rows:
        nodes.append(helper.make_node("Identity", ["per_row"], ["label"]))
    else:
        nodes.append(helper.make_node("ReduceSum", ["per_row"], ["label"], keepdims=1))
    graph = helper.make_graph(nodes, "row_sum", [x], [label], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write(repo, name, model, config):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(model)
    (repo / name / "config.toml").write_text(config)


BATCHED = 'max_batch_size = 16\nmax_queue_delay_us = 2000\n'


def test_a_fixed_one_declared_the_batch_dimension_batches(tmp_path):
    repo = tmp_path / "models"
    write(repo, "declared", row_sum_model([1]), BATCHED + '[[outputs]]\nname = "label"\nbatch_dimension = true\n')
    write(repo, "undeclared", row_sum_model([1]), BATCHED)
    write(repo, "lies", row_sum_model([1], keep_rows=False), BATCHED + '[[outputs]]\nname = "label"\nbatch_dimension = true\n')
    server = KilnServer(repo)
    try:
        index = {row["name"]: row for row in httpclient.InferenceServerClient(url=server.url).get_model_repository_index()}
        assert index["declared"]["state"] == "READY"
        assert index["undeclared"]["state"] == "UNAVAILABLE"
        assert "output 'label' has no dynamic first (batch) dimension" in index["undeclared"]["reason"]
        assert index["lies"]["state"] == "UNAVAILABLE"
        assert "for 2 input rows the model answered shape [1]" in index["lies"]["reason"]

        def call(i):
            rows = 1 + i % 4
            x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + i
            c = httpclient.InferenceServerClient(url=server.url)
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = c.infer("declared", [inp]).as_numpy("label")
            c.close()
            return x.sum(axis=1), got

        with ThreadPoolExecutor(max_workers=16) as pool:
            for want, got in pool.map(call, range(64)):
                np.testing.assert_allclose(got, want)
        c = httpclient.InferenceServerClient(url=server.url)
        assert c.get_model_metadata("declared")["outputs"][0]["shape"] == [-1]
        stats = c.get_inference_statistics("declared")["model_stats"][0]
        assert int(stats["execution_count"]) < 64, "batching is on"
    finally:
        assert server.stop() == 0

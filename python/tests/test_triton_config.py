"""A Triton model repository served unchanged: a model folder with Triton's config.pbtxt and no
config.toml is read — instances, dynamic batching, max_batch_size, inputs/outputs (reshape),
version policy, intra-op threads — and what kiln does not apply is named in one warning.
The config is the one ../shared/peers/triton/make_model.py writes for Triton itself."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import tritonclient.http as httpclient

from conftest import ROOT, KilnServer

TRITON_CONFIG = """name: "digits_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
  preferred_batch_size: [ 8, 16 ]
}
instance_group [
  {
    kind: KIND_CPU
    count: 2
  }
]
version_policy: { latest: { num_versions: 1 } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [ { name: "w" batch_size: 1 } ]
"""


def test_a_triton_repository_serves_with_its_config_pbtxt(tmp_path):
    repo = tmp_path / "models"
    (repo / "digits_mlp" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "models" / "digits_mlp" / "1" / "model.onnx", repo / "digits_mlp" / "1")
    (repo / "digits_mlp" / "config.pbtxt").write_text(TRITON_CONFIG)
    # The same model with kiln's defaults, to compare answers.
    (repo / "plain" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "models" / "digits_mlp" / "1" / "model.onnx", repo / "plain" / "1")
    # A config.pbtxt that does not parse: a load error with line and column; the others serve.
    (repo / "broken" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "models" / "digits_mlp" / "1" / "model.onnx", repo / "broken" / "1")
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nmax_batch_size 8\n')
    (repo / "tensorrt" / "1").mkdir(parents=True)
    (repo / "tensorrt" / "config.pbtxt").write_text('platform: "tensorrt_plan"\n')
    s = KilnServer(repo)
    try:
        config = requests.get(f"http://{s.url}/v2/models/digits_mlp/config", timeout=10).json()
        assert config["max_batch_size"] == 64
        assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        # Triton's convention both ways: with max_batch_size the batch dimension is left out.
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
        client = httpclient.InferenceServerClient(s.url)
        x = np.random.default_rng(0).random((5, 64), dtype=np.float32) * 16
        answers = []
        for model in ("digits_mlp", "plain"):
            i = httpclient.InferInput("input", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            r = client.infer(model, [i])
            answers.append((r.as_numpy("label"), r.as_numpy("probabilities")))
        assert np.array_equal(answers[0][0], answers[1][0])
        assert np.array_equal(answers[0][1], answers[1][1])
        # The file's batching at work: concurrent requests merge (executions <= requests), and
        # Triton's statistics count every row.
        def call(_):
            c = httpclient.InferenceServerClient(s.url)
            i = httpclient.InferInput("input", [3, 64], "FP32")
            i.set_data_from_numpy(x[:3])
            return c.infer("digits_mlp", [i]).as_numpy("label").shape

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(16))) == [(3,)] * 16
        stats = client.get_inference_statistics("digits_mlp")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 17
        assert stats["inference_count"] == 5 + 16 * 3
        assert 1 <= stats["execution_count"] <= 17
        index = {m["name"]: m for m in requests.post(f"http://{s.url}/v2/repository/index", json={}, timeout=10).json()}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "config.pbtxt: line 2, column 16" in index["broken"]["reason"], index["broken"]
        assert "not \"tensorrt_plan\"" in index["tensorrt"]["reason"], index["tensorrt"]
    finally:
        assert s.stop() == 0
    warning = next(line for line in s.logs().splitlines() if "config.pbtxt: kiln does not apply" in line)
    for field in ("output.reshape", "dynamic_batching.preferred_batch_size", "model_warmup"):
        assert field in warning, warning


ENSEMBLE = """name: "fraud_pair"
platform: "ensemble"
max_batch_size: 16
input [ { name: "TRANSACTION" data_type: TYPE_FP32 dims: [ 30 ] } ]
output [
  { name: "P_GB" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "P_LR" data_type: TYPE_FP32 dims: [ 2 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "fraud"
      model_version: -1
      input_map { key: "input" value: "TRANSACTION" }
      output_map { key: "probabilities" value: "P_GB" }
    },
    {
      model_name: "fraud_lr"
      model_version: -1
      input_map { key: "input" value: "TRANSACTION" }
      output_map { key: "probabilities" value: "P_LR" }
    }
  ]
}
"""


def test_a_triton_ensemble_runs_as_a_kiln_pipeline(tmp_path):
    repo = tmp_path / "models"
    for name in ("fraud", "fraud_lr"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    (repo / "fraud_pair").mkdir()
    (repo / "fraud_pair" / "config.pbtxt").write_text(ENSEMBLE)
    s = KilnServer(repo)
    try:
        client = httpclient.InferenceServerClient(s.url)
        x = np.random.default_rng(1).normal(size=(4, 30)).astype(np.float32)

        def infer(model, input_name, outputs):
            i = httpclient.InferInput(input_name, list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            r = client.infer(model, [i])
            return [r.as_numpy(o) for o in outputs]

        gb, lr = infer("fraud_pair", "TRANSACTION", ["P_GB", "P_LR"])
        assert np.array_equal(gb, infer("fraud", "input", ["probabilities"])[0])
        assert np.array_equal(lr, infer("fraud_lr", "input", ["probabilities"])[0])
        meta = client.get_model_metadata("fraud_pair")
        assert [i["name"] for i in meta["inputs"]] == ["TRANSACTION"]
        assert [o["name"] for o in meta["outputs"]] == ["P_GB", "P_LR"]
    finally:
        assert s.stop() == 0

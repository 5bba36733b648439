"""Request bodies and model repositories for bench/scheduler.sh.

    scheduler_bodies.py WORK                  WORK/{model}.json (v2 JSON, 1 row) and
                                              WORK/{model}.grpc (a framed ModelInferRequest)
    scheduler_bodies.py WORK --repos N on|off WORK/kiln-N-on|off and WORK/triton-N-on|off

Models are WORK/{digits_mlp,fraud}.onnx. Every setting has one intra-op thread, max batch 64,
queue delay 0; the Triton configs say the same in config.pbtxt.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx

MODELS = ("digits_mlp", "fraud", "digits_wide")
TYPES = {1: ("FP32", "TYPE_FP32"), 7: ("INT64", "TYPE_INT64")}


def signature(path):
    graph = onnx.load(str(path)).graph

    def io(values):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim][1:]) for v in values]

    return io(graph.input), io(graph.output)


def wide_model(work):
    """StandardScaler + MLP(1024, 1024) on the digits: ~1.1M weights (4 MB, beyond the L2 cache),
    so one row costs a pass over every weight and a batch shares that pass: a model where
    batching pays."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    import warnings

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(1024, 1024), max_iter=5, random_state=0)).fit(x, y)
    onx = to_onnx(pipe, x[:1], options={id(pipe.steps[-1][1]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    (work / "digits_wide.onnx").write_bytes(onx.SerializeToString())


def bodies(work):
    if not (work / "digits_wide.onnx").exists():
        wide_model(work)
    from tritonclient.grpc import service_pb2

    rng = np.random.default_rng(0)
    for model in MODELS:
        (name, _, dims), *_ = signature(work / f"{model}.onnx")[0]
        x = rng.standard_normal((1, dims[0])).astype(np.float32)
        body = {"inputs": [{"name": name, "shape": [1, dims[0]], "datatype": "FP32", "data": x.ravel().tolist()}]}
        (work / f"{model}.json").write_text(json.dumps(body))
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "FP32"
        tensor.shape.extend([1, dims[0]])
        request.raw_input_contents.append(x.tobytes())
        message = request.SerializeToString()
        (work / f"{model}.grpc").write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)


def triton_config(model, inputs, outputs, instances, batching):
    def tensor(name, elem, dims):
        shape = ", ".join(str(d) for d in dims) or "1"
        reshape = "" if dims else "\n    reshape: { shape: [ ] }"
        return f'  {{\n    name: "{name}"\n    data_type: {TYPES[elem][1]}\n    dims: [ {shape} ]{reshape}\n  }}'

    return "\n".join([
        f'name: "{model}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        "input [\n" + ",\n".join(tensor(*i) for i in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(*o) for o in outputs) + "\n]",
        "dynamic_batching { }" if batching else "",
        f"instance_group [ {{ kind: KIND_CPU\n count: {instances} }} ]",
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }',
        'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }',
        "",
    ])


def repos(work, instances, batch):
    batching = batch == "on"
    for model in MODELS:
        onnx_file = work / f"{model}.onnx"
        inputs, outputs = signature(onnx_file)
        kiln = work / f"kiln-{instances}-{batch}" / model
        (kiln / "1").mkdir(parents=True, exist_ok=True)
        (kiln / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
        (kiln / "config.toml").write_text(
            f"instances = {instances}\nthreads = 1\nmax_batch_size = 64\n"
            f"dynamic_batching = {'true' if batching else 'false'}\nmax_queue_delay_us = 0\n"
        )
        triton = work / f"triton-{instances}-{batch}" / model
        (triton / "1").mkdir(parents=True, exist_ok=True)
        (triton / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
        (triton / "config.pbtxt").write_text(triton_config(model, inputs, outputs, instances, batching))


if __name__ == "__main__":
    work = Path(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "--repos":
        repos(work, int(sys.argv[3]), sys.argv[4])
    else:
        bodies(work)

"""Export a Python model into a kiln model repository, with a parity fixture.

    kiln.export.sklearn(estimator, sample_X, "models", "fraud")   # -> models/fraud/<v>/model.onnx
    kiln.export.torch(module, sample_inputs, "models", "net")     # when torch is installed

Each export writes REPO/name/<version>/model.onnx (the next version number unless given),
REPO/name/config.toml (class labels for classifiers) and REPO/name/<version>/parity.json: the
sample inputs and what the Python model itself computed on them, which `kiln.verify` and
`kiln verify REPO/name` compare against.
"""

import json
import os

import numpy as np


def _next_version(model_dir, version):
    if version is not None:
        return int(version)
    existing = [int(v) for v in os.listdir(model_dir) if v.isdigit()] if os.path.isdir(model_dir) else []
    return max(existing, default=0) + 1


def _tensor(array):
    array = np.asarray(array)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.ravel().tolist()}


def _write(repo, name, version, onnx_bytes, parity, config=None):
    model_dir = os.path.join(repo, name)
    version = _next_version(model_dir, version)
    version_dir = os.path.join(model_dir, str(version))
    os.makedirs(version_dir, exist_ok=True)
    with open(os.path.join(version_dir, "model.onnx"), "wb") as f:
        f.write(onnx_bytes)
    with open(os.path.join(version_dir, "parity.json"), "w") as f:
        json.dump(parity, f)
    if config is not None:
        with open(os.path.join(model_dir, "config.toml"), "w") as f:
            f.write(config)
    return version_dir


def sklearn(estimator, sample_X, repo, name, version=None, tolerance=1e-5, target_opset=None):
    """Converts a fitted scikit-learn estimator or pipeline with skl2onnx (ZipMap off, so
    probabilities are a plain FP32 tensor) and writes it, its config and its parity fixture.
    Returns the version folder."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    x = np.asarray(sample_X)
    if x.dtype == np.float64:
        x = x.astype(np.float32)  # skl2onnx computes in float32; the fixture uses what kiln gets
    kinds = {np.dtype("float32"): FloatTensorType, np.dtype("float64"): DoubleTensorType, np.dtype("int64"): Int64TensorType}
    if x.dtype not in kinds:
        raise TypeError(f"sample_X has dtype {x.dtype}; use float32, float64 or int64")
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    is_classifier = hasattr(final, "predict_proba") and hasattr(final, "classes_")
    options = {id(final): {"zipmap": False}} if is_classifier else None
    onx = convert_sklearn(estimator, initial_types=[("input", kinds[x.dtype]([None, x.shape[1]]))],
                          options=options, target_opset=target_opset or {"": 17, "ai.onnx.ml": 3})
    outputs = [o.name for o in onx.graph.output]
    expected = {}
    config = None
    if is_classifier:
        labels = estimator.predict(x)
        expected[outputs[0]] = dict(_tensor(np.asarray([str(v) for v in labels], dtype=object)), kind="labels")
        expected[outputs[1]] = _tensor(estimator.predict_proba(x).astype(np.float64))
        classes = ", ".join(json.dumps(str(c)) for c in final.classes_)
        config = f"# Written by kiln.export.sklearn.\n[labels]\n{outputs[1]} = [{classes}]\n"
    else:
        y = np.asarray(estimator.predict(x), dtype=np.float64)
        expected[outputs[0]] = _tensor(y.reshape(len(x), -1))
    parity = {"source": f"scikit-learn {type(estimator).__name__}", "tolerance": tolerance,
              "inputs": {"input": _tensor(x)}, "expected": expected}
    return _write(repo, name, version, onx.SerializeToString(), parity, config)


def torch(module, sample_inputs, repo, name, version=None, input_names=None, output_names=None, tolerance=1e-4):
    """Exports a PyTorch module with torch.onnx.export (batch dimension dynamic) and writes it
    with its parity fixture. Needs torch installed. Returns the version folder."""
    import io

    import torch as th

    inputs = sample_inputs if isinstance(sample_inputs, (tuple, list)) else (sample_inputs,)
    input_names = input_names or [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    module.eval()
    with th.no_grad():
        result = module(*inputs)
    results = result if isinstance(result, (tuple, list)) else (result,)
    output_names = output_names or [f"output{i}" if len(results) > 1 else "output" for i in range(len(results))]
    buffer = io.BytesIO()
    th.onnx.export(module, tuple(inputs), buffer, input_names=input_names, output_names=output_names,
                   dynamic_axes={n: {0: "batch"} for n in input_names + output_names}, opset_version=17)
    parity = {"source": f"torch {type(module).__name__}", "tolerance": tolerance,
              "inputs": {n: _tensor(t.detach().cpu().numpy()) for n, t in zip(input_names, inputs)},
              "expected": {n: _tensor(r.detach().cpu().numpy().astype(np.float64)) for n, r in zip(output_names, results)}}
    return _write(repo, name, version, buffer.getvalue(), parity)

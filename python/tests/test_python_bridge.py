"""`import kiln`: the engine in-process on numpy arrays, export from scikit-learn, and parity
verification — with the real onnxruntime, scikit-learn and the real `kiln` binary."""

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

import kiln
from conftest import ROOT, kiln_bin
from test_scheduler import slow_model

DEMO = ["fraud", "breast_cancer", "digits_mlp", "iris"]


@pytest.mark.parametrize("name", DEMO)
def test_demo_models_match_scikit_learn_in_process(fixture, name):
    fx = fixture(name)
    model = kiln.Model(str(ROOT / "examples" / "models"), name=name)
    x = np.asarray(fx["inputs"], dtype=np.float32)
    out = model.predict(x)
    assert list(out) == [o["name"] for o in model.outputs]
    assert [str(v) for v in model.predict_labels(x).tolist()] == [str(v) for v in fx["labels"]]
    np.testing.assert_allclose(model.predict_proba(x), np.asarray(fx["probabilities"]), atol=1e-5, rtol=0)
    # fraud's config.toml names its classes; the others carry scikit-learn's.
    want = ["legit", "fraud"] if name == "fraud" else [str(c) for c in fx["classes"]]
    assert model.classes_ == want


def test_every_dtype_and_selected_outputs():
    model = kiln.Model(str(ROOT / "testdata" / "models" / "all_types"))
    arrays = {
        "in_bool": np.array([[True, False, True]]), "in_uint8": np.array([[0, 1, 255]], np.uint8),
        "in_uint16": np.array([[0, 1, 65535]], np.uint16), "in_uint32": np.array([[0, 1, 2**32 - 1]], np.uint32),
        "in_uint64": np.array([[0, 1, 2**64 - 1]], np.uint64), "in_int8": np.array([[-128, 1, 127]], np.int8),
        "in_int16": np.array([[-1, 1, 2]], np.int16), "in_int32": np.array([[-(2**31), 1, 2]], np.int32),
        "in_int64": np.array([[-(2**63), 1, 2]], np.int64), "in_fp16": np.array([[0.5, -1, 65504]], np.float16),
        "in_fp32": np.array([[0.5, -1, 3e38]], np.float32), "in_fp64": np.array([[0.5, -1, 1e300]], np.float64),
        "in_bytes": np.array([["a", "h\u00e9", ""]], dtype=object),
    }
    out = model.predict(arrays)
    for name, arr in arrays.items():
        got = out[name.replace("in_", "out_")]
        assert got.shape == arr.shape
        assert got.tolist() == arr.tolist(), name
    only = model.predict(arrays, outputs=["out_int64", "out_bytes"])
    assert list(only) == ["out_int64", "out_bytes"]
    bytes_in = dict(arrays, in_bytes=np.array([[b"x", b"y", b"z"]], dtype=object))
    assert model.predict(bytes_in, outputs=["out_bytes"])["out_bytes"].tolist() == [["x", "y", "z"]]


def test_non_contiguous_inputs_and_lists(fixture):
    fx = fixture("fraud")
    model = kiln.Model(str(ROOT / "examples" / "models" / "fraud"))
    x = np.asarray(fx["inputs"], dtype=np.float32)
    want = model.predict_proba(x)
    np.testing.assert_array_equal(model.predict_proba(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(model.predict_proba(x[::2]), want[::2])
    wide = np.zeros((len(x), 60), dtype=np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(model.predict_proba(wide[:, ::2]), want)
    np.testing.assert_allclose(model.predict_proba(np.asarray(fx["inputs"][:3], dtype=np.float32).tolist()), want[:3])


def test_errors_are_precise_python_exceptions():
    model = kiln.Model(str(ROOT / "examples" / "models" / "fraud"))
    with pytest.raises(kiln.KilnError, match=r"input 'input': expected datatype FP32, got FP64"):
        model.predict(np.zeros((1, 30)))
    with pytest.raises(kiln.KilnError, match=r"expected shape \[-1, 30\] \(-1 = any size\), got \[2, 29\]"):
        model.predict(np.zeros((2, 29), np.float32))
    with pytest.raises(kiln.KilnError, match=r"unknown input 'x'"):
        model.predict({"x": np.zeros((1, 30), np.float32)})
    with pytest.raises(kiln.KilnError, match=r"unknown output 'nope'"):
        model.predict(np.zeros((1, 30), np.float32), outputs=["nope"])
    with pytest.raises(kiln.KilnError, match=r"has no KServe v2 datatype"):
        model.predict(np.zeros((1, 30), np.complex64))
    with pytest.raises(kiln.KilnError, match=r"cannot load model"):
        kiln.Model(str(ROOT / "testdata" / "models" / "broken"))
    with pytest.raises(kiln.KilnError, match=r"neither an ONNX file nor a model folder"):
        kiln.Model("/nonexistent/model")
    multi = kiln.Model(str(ROOT / "testdata" / "models" / "fixed_add"))
    with pytest.raises(kiln.KilnError, match=r'has 2 inputs \["a", "b"\]: pass a dict'):
        multi.predict(np.zeros((2, 3), np.float32))
    assert isinstance(kiln.KilnError("x"), ValueError)


def test_the_gil_is_released_during_inference(tmp_path):
    path = tmp_path / "slow.onnx"
    path.write_bytes(slow_model(512))
    model = kiln.Model(str(path), instances=2)
    x = np.ones((1, 1), np.float32)
    model.predict(x)
    intervals = []

    def work():
        for _ in range(3):
            start = time.perf_counter()
            model.predict(x)
            intervals.append((start, time.perf_counter()))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    intervals.sort()
    overlaps = sum(1 for a, b in zip(intervals, intervals[1:]) if b[0] < a[1])
    assert overlaps >= 1, f"no two predict calls overlapped: {intervals}"


def train_models():
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bc = load_breast_cancer()
    digits = load_digits()
    diabetes = load_diabetes()
    yield "logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(bc.data, bc.target), bc.data[:40]
    yield "gbc", GradientBoostingClassifier(n_estimators=20, random_state=0).fit(bc.data, bc.target), bc.data[:40]
    yield "mlp", make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0)).fit(digits.data, digits.target), digits.data[:40]
    yield "rf_regressor", RandomForestRegressor(n_estimators=10, random_state=0).fit(diabetes.data, diabetes.target), diabetes.data[:40]
    xi = (diabetes.data * 100).astype(np.int64)
    yield "int_input_regressor", RandomForestRegressor(n_estimators=10, random_state=0).fit(xi, diabetes.target), xi[:40]


@pytest.mark.filterwarnings("ignore")
def test_export_then_verify(tmp_path):
    repo = tmp_path / "models"
    for name, estimator, sample in train_models():
        folder = kiln.export.sklearn(estimator, sample, str(repo), name)
        assert folder.endswith(os.path.join(name, "1"))
        report = kiln.verify(str(repo), name)
        assert report["ok"], report
        model = kiln.Model(str(repo / name))
        if hasattr(estimator, "classes_"):
            assert [str(c) for c in model.classes_] == [str(c) for c in estimator.classes_]
            assert model.predict_labels(np.asarray(sample, np.float32)).tolist() == estimator.predict(sample).tolist()
        out = subprocess.run([kiln_bin(), "verify", str(repo / name), "--json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ok"] is True
    # Exporting again makes version 2.
    name, estimator, sample = next(train_models())
    assert kiln.export.sklearn(estimator, sample, str(repo), name).endswith(os.path.join(name, "2"))
    assert kiln.verify(str(repo), name)["version"] == 2


@pytest.mark.filterwarnings("ignore")
def test_a_tampered_model_fails_verification(tmp_path):
    repo = tmp_path / "models"
    models = list(train_models())
    (_, logistic, sample), (_, gbc, _) = models[0], models[1]
    kiln.export.sklearn(logistic, sample, str(repo), "m")
    kiln.export.sklearn(gbc, sample, str(tmp_path / "other"), "m")
    # Someone replaced the model file: same inputs and outputs, different model.
    (repo / "m" / "1" / "model.onnx").write_bytes((tmp_path / "other" / "m" / "1" / "model.onnx").read_bytes())
    with pytest.raises(kiln.VerificationError) as err:
        kiln.verify(str(repo), "m")
    assert not err.value.report["ok"]
    out = subprocess.run([kiln_bin(), "verify", str(repo / "m")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "DIFFERS" in out.stdout and "differ from the Python model" in out.stderr


def test_torch_export_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is a 3 GB wheel and is not installed in CI")
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    kiln.export.torch(net, torch.randn(5, 8), str(tmp_path), "net")
    assert kiln.verify(str(tmp_path), "net")["ok"]

"""Export a Python model into a kiln model repository, with a parity fixture.

    kiln.export.model(estimator, sample_X, "models", "fraud")    # picks the converter below
    kiln.export.sklearn(pipeline, sample_df, "models", "churn")    # skl2onnx; DataFrames too
    kiln.export.xgboost(booster, sample_X, "models", "xgb")        # onnxmltools
    kiln.export.lightgbm(booster, sample_X, "models", "lgbm")      # onnxmltools
    kiln.export.catboost(booster, sample_X, "models", "cb")        # CatBoost's own ONNX export
    kiln.export.torch(module, sample_inputs, "models", "net")      # when torch is installed

Each export writes REPO/name/<version>/model.onnx (the next version number unless given),
REPO/name/config.toml (batching for tabular models, class labels for classifiers) and
REPO/name/<version>/parity.json: the sample inputs and what the Python model itself computed on
them, which `kiln.verify` and `kiln verify REPO/name` compare against. The export runs that
comparison at once and warns (`ParityWarning`) when kiln's answers differ.

Inputs. A numpy array becomes one input, `input` [N, features]. A pandas DataFrame given to
`sklearn` becomes one input per column, named after it, shape [N, 1] (as skl2onnx and its
ColumnTransformer converter expect): text and categorical columns BYTES, every numeric or
boolean column FP32 (skl2onnx computes in float32; int and float columns mixed in one imputer or
scaler would not convert otherwise). NaN in numeric columns is kept (imputers and boosted trees
handle it); a missing value in a text column is an error naming it. `kiln.Model.predict` takes
the same DataFrame. The boosting libraries' converters take one float matrix, so `xgboost`,
`lightgbm` and `catboost` accept a DataFrame only when every column is numeric (in column order).

Outputs. Classifiers answer `label` and `probabilities` FP32 [N, classes] (no ZipMap: CatBoost's
is removed), regressors `variable`. Every output's first dimension is the batch, whatever the
converter declared (onnxmltools' LightGBM says `label` is [1], CatBoost's regressor [N] for
[N, 1]): the export runs the model and declares what it returns.
"""

import contextlib
import json
import os
import warnings

import numpy as np

DEFAULT_OPSET = {"": 17, "ai.onnx.ml": 3}
# onnxmltools' converters refuse a main opset above 15.
BOOSTING_OPSET = 15
# Tabular models cost less per row in batches; merging only what is already waiting (no
# added delay) keeps a lone request's latency unchanged.
BATCHING = "max_batch_size = 256\nmax_queue_delay_us = 0\n"


class ParityWarning(UserWarning):
    """kiln's outputs on the sample differ from the Python model's beyond the tolerance."""


# ---------------------------------------------------------------------------------------------
# Inputs


@contextlib.contextmanager
def _needs(converter):
    """A converter's optional libraries: a missing one is an error that says what to install."""
    try:
        yield
    except ModuleNotFoundError as e:
        missing = e.name or str(e)
        raise ModuleNotFoundError(
            f"kiln.export.{converter} needs the '{missing}' package, which is not installed: "
            f"pip install 'kiln[export]' (scikit-learn, skl2onnx, onnx, onnxmltools, pandas), "
            f"or pip install {missing}", name=missing) from e


def _is_frame(x):
    return hasattr(x, "columns") and hasattr(x, "dtypes") and hasattr(x, "iloc")


def _is_text(dtype):
    return getattr(dtype, "kind", None) in ("O", "U", "S") or str(dtype) in ("string", "str", "category")


def _frame_columns(frame):
    """[(name, "text" | "number")] for each column, or a TypeError naming the column."""
    columns = []
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise TypeError(f"sample_X has repeated column names {sorted(n for n in names if names.count(n) > 1)}")
    for column, dtype in zip(frame.columns, frame.dtypes):
        if not isinstance(column, str):
            raise TypeError(f"sample_X column {column!r} is not named by a string; each column becomes an input named after it")
        if _is_text(dtype):
            missing = frame[column].isna().to_numpy()
            if missing.any():
                raise TypeError(f"sample_X column '{column}' is text with {int(missing.sum())} missing values "
                                f"(first at row {int(np.argmax(missing))}); an ONNX string tensor has no missing "
                                f"value: fill them (e.g. df['{column}'].fillna('missing')) before fitting and exporting")
            columns.append((column, "text"))
        elif getattr(dtype, "kind", None) in ("f", "i", "u", "b"):
            columns.append((column, "number"))
        else:
            raise TypeError(f"sample_X column '{column}' has dtype {dtype}, which has no ONNX input type here; "
                            f"convert it to numbers or text first")
    return columns


def frame_inputs(frame, columns=None):
    """The per-column inputs a DataFrame-exported model takes: {name: array [N, 1]}, text as
    str objects and numbers as float32 (what `kiln.Model.predict(frame)` does itself)."""
    columns = columns or _frame_columns(frame)
    out = {}
    for name, kind in columns:
        values = frame[name].to_numpy()
        if kind == "text":
            values = np.asarray([str(v) for v in values], dtype=object)
        else:
            values = np.asarray(values, dtype=np.float32)
        out[name] = values.reshape(-1, 1)
    return out


def _matrix(sample_X, library):
    """One float32 matrix for the boosting libraries' converters."""
    if _is_frame(sample_X):
        text = [str(c) for c, kind in _frame_columns(sample_X) if kind == "text"]
        if text:
            raise TypeError(f"{library}'s ONNX converter takes numeric features only; sample_X has text columns "
                            f"{text}: encode them (or export a scikit-learn Pipeline with a ColumnTransformer "
                            f"through kiln.export.sklearn)")
        sample_X = sample_X.to_numpy(dtype=np.float32)
    x = np.asarray(sample_X)
    if x.dtype.kind not in ("f", "i", "u", "b"):
        raise TypeError(f"sample_X has dtype {x.dtype}; {library}'s ONNX converter takes numbers")
    if x.ndim != 2:
        raise TypeError(f"sample_X has shape {list(x.shape)}; expected [rows, features]")
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The ONNX file


def _strip_zipmaps(graph):
    """Replaces each ZipMap feeding a graph output with the float tensor it reads, under the
    output's name (CatBoost's classifiers end with one)."""
    from onnx import TensorProto, helper

    outputs = {o.name: i for i, o in enumerate(graph.output)}
    for node in [n for n in graph.node if n.op_type == "ZipMap" and n.output[0] in outputs]:
        source, target = node.input[0], node.output[0]
        classes = next((len(a.ints) or len(a.strings)) for a in node.attribute if a.name.startswith("classlabels"))
        graph.node.remove(node)
        for other in graph.node:
            for k, name in enumerate(other.output):
                if name == source:
                    other.output[k] = target
            for k, name in enumerate(other.input):
                if name == source:
                    other.input[k] = target
        graph.output[outputs[target]].CopyFrom(helper.make_tensor_value_info(target, TensorProto.FLOAT, ["N", classes]))


def _rename(graph, renames):
    for old, new in renames.items():
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new
            for k, name in enumerate(node.output):
                if name == old:
                    node.output[k] = new
        for value in list(graph.input) + list(graph.output):
            if value.name == old:
                value.name = new


def _declare_batch(onx, feeds):
    """Runs the model on the sample (at least 2 rows) and declares each output's first
    dimension as the batch where the converter fixed or dropped it."""
    import onnxruntime

    rows = len(next(iter(feeds.values())))
    quiet = onnxruntime.SessionOptions()
    quiet.log_severity_level = 3  # the declared shapes being fixed here are what it would warn about
    session = onnxruntime.InferenceSession(onx.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
    actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for output in onx.graph.output:
        got = np.asarray(actual[output.name]).shape
        dims = output.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if not got or got[0] != rows:
            continue  # not batched: leave as declared
        if len(declared) == len(got) and declared[0] is None:
            continue
        del dims[:]
        for k, size in enumerate(got):
            dim = dims.add()
            if k == 0:
                dim.dim_param = "N"
            else:
                dim.dim_value = size
    return actual


# ---------------------------------------------------------------------------------------------
# Writing


def _next_version(model_dir, version):
    if version is not None:
        return int(version)
    existing = [int(v) for v in os.listdir(model_dir) if v.isdigit()] if os.path.isdir(model_dir) else []
    return max(existing, default=0) + 1


def _tensor(array):
    array = np.asarray(array)
    data = array.ravel().tolist()
    if array.dtype.kind == "f":
        data = [None if v != v else v for v in data]  # NaN is JSON null (JSON has no NaN)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": data}


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


def _check(version_dir, source):
    """kiln's own parity check right after writing; a difference is a warning, not an error:
    the files are written and `kiln.verify` reports the same."""
    from .verify import VerificationError, verify

    model_dir, version = os.path.split(version_dir)
    try:
        verify(model_dir, version=int(version))
    except VerificationError as err:
        bad = {k: v for k, v in err.report["outputs"].items() if not v["ok"]}
        warnings.warn(f"{source}: kiln's outputs on the sample differ from the Python model's: {bad} "
                      f"(float32 features near tree thresholds do this; see kiln.verify)", ParityWarning, stacklevel=3)


def _tabular(onx, feeds, source, classes, library_outputs, repo, name, version, tolerance):
    """The shared tail of every tabular export: declared batch shapes, the fixture from the
    library's own outputs, config.toml with batching and labels, and the parity check."""
    _declare_batch(onx, feeds)
    outputs = [o.name for o in onx.graph.output]
    expected = {}
    header = f"# Written by kiln.export ({source}).\n{BATCHING}"
    if classes is not None:
        labels, proba = library_outputs
        label_out, proba_out = outputs[0], outputs[1]
        expected[label_out] = dict(_tensor(np.asarray([str(v) for v in np.ravel(labels)], dtype=object)), kind="labels")
        expected[proba_out] = _tensor(np.asarray(proba, dtype=np.float64))
        names = ", ".join(json.dumps(str(c)) for c in classes)
        config = f"{header}\n[labels]\n{proba_out} = [{names}]\n"
    else:
        (values,) = library_outputs
        expected[outputs[0]] = _tensor(np.asarray(values, dtype=np.float64).reshape(len(next(iter(feeds.values()))), -1))
        config = header
    parity = {"source": source, "tolerance": tolerance, "inputs": {k: _tensor(v) for k, v in feeds.items()},
              "expected": expected}
    folder = _write(repo, name, version, onx.SerializeToString(), parity, config)
    _check(folder, source)
    return folder


def _classes(estimator):
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if hasattr(final, "predict_proba") and hasattr(final, "classes_"):
        return final, list(final.classes_)
    return final, None


# ---------------------------------------------------------------------------------------------
# Converters


def _register_boosters():
    """Lets skl2onnx convert XGBoost and LightGBM estimators inside scikit-learn pipelines
    (through onnxmltools' converters), when those libraries are installed."""
    with _needs("sklearn"):
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                       calculate_linear_regressor_output_shapes)

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost as xgb
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(xgb.XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                    convert_xgboost, options=options)
        update_registered_converter(xgb.XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                    convert_xgboost)
    except ImportError:
        pass
    try:
        import lightgbm as lgb
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(lgb.LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                    convert_lightgbm, options=options)
        update_registered_converter(lgb.LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                    convert_lightgbm)
    except ImportError:
        pass


def sklearn(estimator, sample_X, repo, name, version=None, tolerance=1e-5, target_opset=None):
    """Converts a fitted scikit-learn estimator or pipeline with skl2onnx (ZipMap off, so
    probabilities are a plain FP32 tensor) and writes it, its config and its parity fixture.
    `sample_X` is an array (one input, `input`) or a DataFrame (one input per column; see the
    module's help). XGBoost and LightGBM estimators inside a pipeline convert too. Returns the
    version folder."""
    with _needs("sklearn"):
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType, StringTensorType

    _register_boosters()
    final, classes = _classes(estimator)
    if _is_frame(sample_X):
        columns = _frame_columns(sample_X)
        types = [(c, StringTensorType([None, 1]) if kind == "text" else FloatTensorType([None, 1])) for c, kind in columns]
        feeds = frame_inputs(sample_X, columns)
        library_X = sample_X
    else:
        x = np.asarray(sample_X)
        if x.dtype == np.float64:
            x = x.astype(np.float32)  # skl2onnx computes in float32; the fixture uses what kiln gets
        kinds = {np.dtype("float32"): FloatTensorType, np.dtype("float64"): DoubleTensorType, np.dtype("int64"): Int64TensorType}
        if x.dtype not in kinds:
            raise TypeError(f"sample_X has dtype {x.dtype}; use float32, float64 or int64, or a pandas DataFrame "
                            f"(one input per column, text columns as strings)")
        types = [("input", kinds[x.dtype]([None, x.shape[1]]))]
        feeds = {"input": x}
        library_X = x
    options = {id(final): {"zipmap": False}} if classes is not None else None
    onx = convert_sklearn(estimator, initial_types=types, options=options, target_opset=target_opset or DEFAULT_OPSET)
    source = f"scikit-learn {type(estimator).__name__}"
    if classes is not None:
        outputs = (estimator.predict(library_X), estimator.predict_proba(library_X))
    else:
        outputs = (estimator.predict(library_X),)
    return _tabular(onx, feeds, source, classes, outputs, repo, name, version, tolerance)


def xgboost(estimator, sample_X, repo, name, version=None, tolerance=1e-5):
    """Converts a fitted `xgboost.XGBClassifier` / `XGBRegressor` with onnxmltools. Class labels
    are xgboost's (0..k-1). Returns the version folder."""
    with _needs("xgboost"):
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

    x = _matrix(sample_X, "XGBoost")
    onx = convert_xgboost(estimator, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                          target_opset=BOOSTING_OPSET)
    return _booster(onx, estimator, x, f"xgboost {type(estimator).__name__}", repo, name, version, tolerance)


def lightgbm(estimator, sample_X, repo, name, version=None, tolerance=1e-5):
    """Converts a fitted `lightgbm.LGBMClassifier` / `LGBMRegressor` with onnxmltools (ZipMap
    off; `label` declared with its batch dimension). Returns the version folder."""
    with _needs("lightgbm"):
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

    x = _matrix(sample_X, "LightGBM")
    onx = convert_lightgbm(estimator, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], zipmap=False,
                           target_opset=BOOSTING_OPSET)
    return _booster(onx, estimator, x, f"lightgbm {type(estimator).__name__}", repo, name, version, tolerance)


def catboost(estimator, sample_X, repo, name, version=None, tolerance=1e-5):
    """Exports a fitted `catboost.CatBoostClassifier` / `CatBoostRegressor` with CatBoost's own
    ONNX export (numeric features only: CatBoost cannot export categorical features to ONNX),
    then names its input `input`, its outputs `label`/`probabilities`/`variable` and removes the
    ZipMap. Returns the version folder."""
    import tempfile

    with _needs("catboost"):
        import onnx

    if estimator.get_cat_feature_indices():
        raise TypeError("CatBoost's ONNX export does not support categorical features "
                        f"(this model has cat_features {estimator.get_cat_feature_indices()})")
    x = _matrix(sample_X, "CatBoost")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.onnx")
        estimator.save_model(path, format="onnx")
        onx = onnx.load(path)
    _strip_zipmaps(onx.graph)
    _rename(onx.graph, {"features": "input", "predictions": "variable"})
    return _booster(onx, estimator, x, f"catboost {type(estimator).__name__}", repo, name, version, tolerance)


def _booster(onx, estimator, x, source, repo, name, version, tolerance):
    classes = list(estimator.classes_) if hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_") else None
    if classes is not None:
        outputs = (np.ravel(estimator.predict(x)), estimator.predict_proba(x))
    else:
        outputs = (estimator.predict(x),)
    return _tabular(onx, {"input": x}, source, classes, outputs, repo, name, version, tolerance)


def model(estimator, sample_X, repo, name, version=None, **options):
    """Exports any supported model, choosing the converter by the estimator's library:
    xgboost, lightgbm, catboost, torch (an nn.Module), else scikit-learn (estimators and
    pipelines, XGBoost/LightGBM steps included). Returns the version folder."""
    library = type(estimator).__module__.split(".")[0]
    export = {"xgboost": xgboost, "lightgbm": lightgbm, "catboost": catboost}.get(library)
    if export is None and library == "torch":
        export = torch
    return (export or sklearn)(estimator, sample_X, repo, name, version=version, **options)


def torch(module, sample_inputs, repo, name, version=None, input_names=None, output_names=None, tolerance=1e-4):
    """Exports a PyTorch module with torch.onnx.export (batch dimension dynamic) and writes it
    with its parity fixture. Needs torch installed. Returns the version folder."""
    import io

    with _needs("torch"):
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

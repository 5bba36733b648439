"""`kiln.export` for the models people train: XGBoost, LightGBM and CatBoost estimators, and
scikit-learn pipelines over pandas DataFrames (ColumnTransformer: text + numbers + NaN, boosted
trees inside). Each goes export → `kiln.verify` and `kiln verify` → `kiln serve` → tritonclient,
and must answer what the library itself predicts. Real libraries from PyPI, no stand-ins."""

import json
import subprocess
import warnings

import numpy as np
import pytest
import tritonclient.http as httpclient

import kiln
from conftest import KilnServer, kiln_bin

pd = pytest.importorskip("pandas")
xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")
catboost = pytest.importorskip("catboost")

from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler  # noqa: E402


def boosters():
    iris, diabetes, cancer = load_iris(), load_diabetes(), load_breast_cancer()
    named = np.array(["benign", "malignant"])[cancer.target]
    with_nan = diabetes.data.copy()
    with_nan[::7, 2] = np.nan  # boosted trees route missing values; the fixture keeps them
    yield "xgb_classifier", xgboost.XGBClassifier(n_estimators=25, max_depth=3), iris.data, iris.target
    yield "xgb_regressor", xgboost.XGBRegressor(n_estimators=25), with_nan, diabetes.target
    yield "lgbm_classifier", lightgbm.LGBMClassifier(n_estimators=25, verbose=-1), cancer.data, named
    yield "lgbm_regressor", lightgbm.LGBMRegressor(n_estimators=25, verbose=-1), with_nan, diabetes.target
    yield "cb_classifier", catboost.CatBoostClassifier(iterations=25, verbose=0, thread_count=1), cancer.data, named
    yield "cb_multiclass", catboost.CatBoostClassifier(iterations=25, verbose=0, thread_count=1), iris.data, iris.target
    yield "cb_regressor", catboost.CatBoostRegressor(iterations=25, verbose=0, thread_count=1), diabetes.data, diabetes.target


def customers(n=400, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "plan": rng.choice(["free", "pro", "team"], n), "country": rng.choice(["de", "fr", "us", "jp"], n),
        "age": rng.integers(18, 80, n), "spend": rng.gamma(2.0, 30.0, n), "visits": rng.poisson(5, n).astype(float),
        "active": rng.random(n) < 0.5})
    frame.loc[rng.random(n) < 0.1, "spend"] = np.nan
    churn = np.where((frame.plan == "pro") ^ (frame.spend.fillna(0) > 60), "churn", "stay")
    value = frame.age * 2.0 + frame.spend.fillna(10.0) + rng.normal(0.0, 5.0, n)
    return frame, churn, value


TEXT, NUMBERS = ["plan", "country"], ["age", "spend", "visits", "active"]


def encoded():
    return ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), TEXT),
                              ("numbers", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), NUMBERS)])


def ordinal():
    return ColumnTransformer([("text", OrdinalEncoder(), TEXT), ("numbers", "passthrough", NUMBERS)])


def imputed():
    return ColumnTransformer([("text", OrdinalEncoder(), TEXT), ("numbers", SimpleImputer(), NUMBERS)])


def frame_pipelines():
    frame, churn, value = customers()
    yield "ct_logistic", Pipeline([("prep", encoded()), ("model", LogisticRegression())]), churn
    yield "ct_forest", Pipeline([("prep", imputed()), ("model", RandomForestClassifier(20, max_depth=6, random_state=0))]), churn
    yield "ct_hist_gb", Pipeline([("prep", encoded()), ("model", HistGradientBoostingClassifier(max_iter=30))]), churn
    yield "ct_ridge", Pipeline([("prep", encoded()), ("model", Ridge())]), value
    yield "ct_xgboost", Pipeline([("prep", ordinal()), ("model", xgboost.XGBClassifier(n_estimators=20))]), (churn == "churn").astype(int)
    yield "ct_lightgbm", Pipeline([("prep", ordinal()), ("model", lightgbm.LGBMClassifier(n_estimators=20, verbose=-1))]), churn


def export_quietly(estimator, sample, repo, name):
    """Exports, failing the test on a ParityWarning (kiln differing from the library)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", kiln.export.ParityWarning)
        return kiln.export.model(estimator, sample, str(repo), name)


def cli_verify(folder):
    out = subprocess.run([kiln_bin(), "verify", str(folder), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    return report


def library_answer(estimator, x):
    if hasattr(estimator, "predict_proba"):
        return {"probabilities": estimator.predict_proba(x), "label": np.ravel(estimator.predict(x))}
    return {"variable": np.asarray(estimator.predict(x)).reshape(len(x), -1)}


def assert_same(got, want, name):
    for output, expected in want.items():
        if output == "label":
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(got[output])]
            assert text == [str(v) for v in expected], name
        else:
            np.testing.assert_allclose(got[output], expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_boosting_libraries_export_verify_and_serve(tmp_path):
    repo = tmp_path / "models"
    trained = []
    for name, estimator, x, y in boosters():
        estimator.fit(x, y)
        folder = export_quietly(estimator, x[:80], repo, name)
        assert kiln.verify(str(repo), name)["ok"]
        report = cli_verify(repo / name)
        assert report["rows"] == 80
        config = (repo / name / "config.toml").read_text()
        assert "max_batch_size = 256" in config
        if hasattr(estimator, "predict_proba"):
            assert [str(c) for c in kiln.Model(str(repo / name)).classes_] == [str(c) for c in estimator.classes_]
        trained.append((name, estimator, x))
        assert folder.endswith("1")
    server = KilnServer(repo)
    try:
        client = httpclient.InferenceServerClient(url=server.url)
        for name, estimator, x in trained:
            meta = client.get_model_metadata(name)
            assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("input", "FP32", [-1, x.shape[1]])]
            # Every output batches: LightGBM's label was declared [1], CatBoost's regressor [N].
            assert all(o["shape"][0] == -1 for o in meta["outputs"]), meta["outputs"]
            assert client.get_model_config(name)["max_batch_size"] == 256
            rows = x[100:164].astype(np.float32)
            inp = httpclient.InferInput("input", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows)
            result = client.infer(name, [inp])
            want = library_answer(estimator, rows)
            assert_same({k: result.as_numpy(k) for k in want}, want, name)
    finally:
        assert server.stop() == 0


def test_dataframe_pipelines_take_one_input_per_column(tmp_path):
    repo = tmp_path / "models"
    frame, _, _ = customers()
    sample, unseen = frame.iloc[:80], frame.iloc[200:260]
    trained = []
    for name, pipeline, y in frame_pipelines():
        pipeline.fit(frame, y)
        export_quietly(pipeline, sample, repo, name)
        report = kiln.verify(str(repo), name)
        assert report["ok"] and report["rows"] == 80
        cli_verify(repo / name)
        fixture = json.loads((repo / name / "1" / "parity.json").read_text())
        assert fixture["inputs"]["plan"]["dtype"] == "object"
        assert None in fixture["inputs"]["spend"]["data"], "NaN travels as JSON null"
        # In process: the DataFrame itself, each column converted to its input.
        model = kiln.Model(str(repo / name))
        assert [(i["name"], i["datatype"]) for i in model.inputs] == [
            ("plan", "BYTES"), ("country", "BYTES"), ("age", "FP32"), ("spend", "FP32"), ("visits", "FP32"), ("active", "FP32")]
        want = library_answer(pipeline, unseen)
        assert_same(model.predict(unseen), want, name)
        trained.append((name, pipeline))
    server = KilnServer(repo)
    try:
        client = httpclient.InferenceServerClient(url=server.url)
        feeds = kiln.export.frame_inputs(unseen)
        for name, pipeline in trained:
            inputs = []
            for column, values in feeds.items():
                inp = httpclient.InferInput(column, list(values.shape), "BYTES" if values.dtype == object else "FP32")
                inp.set_data_from_numpy(values)
                inputs.append(inp)
            result = client.infer(name, inputs)
            want = library_answer(pipeline, unseen)
            assert_same({k: result.as_numpy(k) for k in want}, want, name)
    finally:
        assert server.stop() == 0


def test_what_cannot_be_exported_or_fed_is_named(tmp_path):
    frame, churn, _ = customers(120)
    holes = frame.copy()
    holes.loc[[3, 9], "plan"] = None
    pipeline = Pipeline([("prep", encoded()), ("model", LogisticRegression())]).fit(frame, churn)
    with pytest.raises(TypeError, match=r"column 'plan' is text with 2 missing values \(first at row 3\)"):
        kiln.export.sklearn(pipeline, holes, str(tmp_path), "holes")
    booster = xgboost.XGBClassifier(n_estimators=5).fit(frame[NUMBERS].astype(float), (churn == "churn").astype(int))
    with pytest.raises(TypeError, match=r"XGBoost's ONNX converter takes numeric features only; sample_X has text columns \['plan', 'country'\]"):
        kiln.export.xgboost(booster, frame, str(tmp_path), "xgb")
    with_categories = catboost.CatBoostClassifier(iterations=5, verbose=0, cat_features=[0]).fit(frame[["plan", "age"]], churn)
    with pytest.raises(TypeError, match="CatBoost's ONNX export does not support categorical features"):
        kiln.export.catboost(with_categories, frame[["plan", "age"]], str(tmp_path), "cb")
    assert not (tmp_path / "holes").exists() and not (tmp_path / "xgb").exists() and not (tmp_path / "cb").exists()

    export_quietly(pipeline, frame.iloc[:20], tmp_path, "churn")
    model = kiln.Model(str(tmp_path / "churn"))
    with pytest.raises(kiln.KilnError, match=r"the DataFrame has no column 'country' \(its columns: 'plan', 'age'"):
        model.predict(frame.drop(columns=["country"]))
    with pytest.raises(kiln.KilnError, match="input 'plan': the DataFrame column has 2 missing values"):
        model.predict(holes)
    # Extra columns (ids, targets) are left out: the model takes the columns it names.
    assert_same(model.predict(frame.assign(customer_id=range(len(frame)))), library_answer(pipeline, frame), "extra")


def test_the_parity_check_catches_what_a_converter_gets_wrong(tmp_path):
    """scikit-learn's forests learn where missing values go (NaN reaching the trees, scikit-learn
    >= 1.4); skl2onnx converts them without that routing. The export says so at once."""
    frame, churn, _ = customers()
    forest = Pipeline([("prep", ordinal()), ("model", RandomForestClassifier(20, max_depth=6, random_state=0))]).fit(frame, churn)
    with pytest.warns(kiln.export.ParityWarning, match="label"):
        kiln.export.sklearn(forest, frame.iloc[:80], str(tmp_path), "forest")
    with pytest.raises(kiln.VerificationError):
        kiln.verify(str(tmp_path), "forest")
    out = subprocess.run([kiln_bin(), "verify", str(tmp_path / "forest")], capture_output=True, text=True)
    assert out.returncode == 1 and "DIFFERS" in out.stdout


def test_a_numeric_frame_is_one_matrix_for_the_boosters(tmp_path):
    diabetes = load_diabetes(as_frame=True)
    booster = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(diabetes.data, diabetes.target)
    export_quietly(booster, diabetes.data.iloc[:50], tmp_path, "lgbm")
    model = kiln.Model(str(tmp_path / "lgbm"))
    assert [i["name"] for i in model.inputs] == ["input"]
    got = model.predict(diabetes.data.iloc[100:140])["variable"]
    np.testing.assert_allclose(got.ravel(), booster.predict(diabetes.data.iloc[100:140]), rtol=1e-5, atol=1e-4)
    # A plain scikit-learn estimator is still exported by kiln.export.model, arrays in.
    ridge = Ridge().fit(diabetes.data.to_numpy(), diabetes.target)
    export_quietly(ridge, diabetes.data.to_numpy()[:30], tmp_path, "ridge")
    assert json.loads((tmp_path / "ridge" / "1" / "parity.json").read_text())["source"] == "scikit-learn Ridge"


def test_a_missing_converter_says_which_package_and_extra_to_install(tmp_path, monkeypatch):
    """kiln.export without onnxmltools (or skl2onnx): not a bare ModuleNotFoundError, but which
    converter needs which package and the extra that installs it."""
    iris = load_iris()
    booster = xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(iris.data, iris.target)
    monkeypatch.setitem(__import__("sys").modules, "onnxmltools", None)
    with pytest.raises(ModuleNotFoundError, match=r"kiln\.export\.xgboost needs the 'onnxmltools' package.*"
                                                  r"pip install 'kiln\[export\]'") as e:
        kiln.export.model(booster, iris.data[:5], tmp_path, "xgb")
    assert e.value.name == "onnxmltools"
    monkeypatch.setitem(__import__("sys").modules, "skl2onnx", None)
    with pytest.raises(ModuleNotFoundError, match=r"kiln\.export\.sklearn needs the 'skl2onnx' package"):
        kiln.export.model(LogisticRegression(max_iter=200).fit(iris.data, iris.target), iris.data[:5], tmp_path, "lr")

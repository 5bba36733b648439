"""Drift from the prediction log alone: a scikit-learn model exported with kiln.export (whose
parity.json sample is the reference), served, fed rows from the training distribution and then
rows with one feature shifted. Every number GET /v1/models/{m}/drift answers is checked against
scipy / numpy on the very same samples; the shifted feature, and only it, is flagged."""

import json
import math
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import kiln
from conftest import KilnServer, metric

scipy_stats = pytest.importorskip("scipy.stats")
LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

RNG = np.random.default_rng(7)


def features(n, shift=0.0):
    x = RNG.normal(size=(n, 3)).astype(np.float32)
    x[:, 1] += shift
    return x


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("drift") / "models"
    train = features(400)
    y = (train[:, 0] + train[:, 2] > 0).astype(np.int64)
    kiln.export.sklearn(LogisticRegression().fit(train, y), features(300), str(repo), "clf")
    server = KilnServer(repo)
    yield server, repo
    assert server.stop() == 0


def post(server, model, x):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    request = urllib.request.Request(f"http://{server.url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://{server.url}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def logged(server, model, at_least):
    deadline = time.time() + 20
    while time.time() < deadline:
        _, body = get(server, f"/v1/predictions?model={model}&limit=1000")
        if len(body["predictions"]) >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError("the log did not catch up")


def psi(reference, recent):
    edges = np.unique(np.quantile(reference, np.arange(1, 10) / 10))
    share = lambda v: np.maximum(np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
                                 / len(v), 1e-4)
    a, b = share(reference), share(recent)
    return float(np.sum((b - a) * np.log(b / a)))


def check_numeric(f, reference, recent):
    assert f["kind"] == "numeric"
    assert f["reference_n"] == len(reference) and f["recent_n"] == len(recent)
    assert f["psi"] == pytest.approx(psi(reference, recent), abs=1e-9)
    ks = scipy_stats.ks_2samp(reference, recent)
    assert f["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-12)
    en = len(reference) * len(recent) / (len(reference) + len(recent))
    assert f["ks_pvalue"] == pytest.approx(scipy_stats.kstwobign.sf(math.sqrt(en) * ks.statistic), rel=1e-6, abs=1e-12)


def test_drift_against_the_export_sample_equals_scipy_and_flags_the_shifted_feature(served):
    server, repo = served
    sample = json.loads((repo / "clf" / "1" / "parity.json").read_text())
    reference = np.array(sample["inputs"]["input"]["data"], dtype=np.float64).reshape(-1, 3)
    expected_labels = sample["expected"]["label"]["data"]

    same = [features(50) for _ in range(6)]
    answers = [post(server, "clf", x) for x in same]
    logged(server, "clf", 6)
    t_mid = int(time.time() * 1000)
    time.sleep(1.5)
    status, body = get(server, "/v1/models/clf/drift")
    assert status == 200, body
    assert body["reference"]["source"] == "sample" and body["state"] == "ok", body
    recent = np.concatenate(same).astype(np.float64)
    # The log's rows come newest first; order does not matter to any statistic.
    named = {f["feature"]: f for f in body["features"]}
    for j in range(3):
        check_numeric(named[f"inputs.input[{j}]"], reference[:, j], recent[:, j])
    # The label output: PSI over classes and the chi-squared test of homogeneity.
    labels = [str(v) for a in answers for v in next(o for o in a["outputs"] if o["name"] == "label")["data"]]
    f = named["outputs.label"]
    classes = sorted(set(labels) | set(expected_labels))
    table = np.array([[expected_labels.count(c) for c in classes], [labels.count(c) for c in classes]])
    chi2, p, dof, _ = scipy_stats.chi2_contingency(table, correction=False)
    assert f["kind"] == "categorical" and f["chi2_dof"] == dof
    assert f["chi2_statistic"] == pytest.approx(chi2, rel=1e-9)
    assert f["chi2_pvalue"] == pytest.approx(p, rel=1e-6)

    shifted = [features(50, shift=3.0) for _ in range(6)]
    for x in shifted:
        post(server, "clf", x)
    logged(server, "clf", 12)
    until = int(time.time() * 1000) + 1
    window = (until - t_mid) // 1000
    status, body = get(server, f"/v1/models/clf/drift?until={until}&window={window}")
    assert status == 200, body
    assert body["state"] == "drifted" and body["drifted"] == ["inputs.input[1]"], body
    named = {f["feature"]: f for f in body["features"]}
    moved = np.concatenate(shifted).astype(np.float64)
    check_numeric(named["inputs.input[1]"], reference[:, 1], moved[:, 1])
    assert named["inputs.input[1]"]["ks_pvalue"] < 1e-6
    assert metric(server.metrics(), "kiln_drift_psi", model="clf", feature="inputs.input[1]") == pytest.approx(
        named["inputs.input[1]"]["psi"])

    # The first phase as the reference window: the same comparison, log against log.
    status, body = get(server, f"/v1/models/clf/drift?until={until}&window={window}&reference=window"
                               f"&reference_since={t_mid - 60_000}&reference_until={t_mid}")
    assert status == 200, body
    assert body["reference"]["source"] == "window" and body["reference"]["requests"] == 6
    check_numeric({f["feature"]: f for f in body["features"]}["inputs.input[1]"], recent[:, 1], moved[:, 1])


def test_bad_drift_queries_are_400s_naming_the_parameter(served):
    server, _ = served
    for query, word in (("window=0", "window"), ("threshold=-1", "threshold"), ("limit=0", "limit"),
                        ("reference=yesterday", "reference"), ("bogus=1", "bogus")):
        status, body = get(server, f"/v1/models/clf/drift?{query}")
        assert status == 400 and word in body["error"], (query, body)
    status, body = get(server, "/v1/models/nope/drift")
    assert status == 404, body


def test_too_little_data_is_insufficient_not_an_error(served):
    server, _ = served
    status, body = get(server, "/v1/models/clf/drift?reference=window&window=1&until=1000")
    assert status == 200 and body["state"] == "insufficient_data", body

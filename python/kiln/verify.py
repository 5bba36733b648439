"""Parity verification: run a model's stored fixture (`parity.json`, written by
`kiln.export`) through kiln and compare with the outputs the Python model computed."""

import json
import os

import numpy as np

from ._kiln import Model


class VerificationError(AssertionError):
    """kiln's outputs differ from the Python model's beyond the tolerance."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def _fixture_path(repo, name, version):
    model_dir = os.path.join(repo, name) if name else repo
    if version is None:
        versions = sorted(int(v) for v in os.listdir(model_dir) if v.isdigit())
        if not versions:
            raise FileNotFoundError(f"no version folders in {model_dir}")
        version = versions[-1]
    return model_dir, version, os.path.join(model_dir, str(version), "parity.json")


def verify(repo, name=None, version=None, tolerance=None):
    """Runs REPO/name/<version>/parity.json through kiln. Returns a report dict; raises
    VerificationError when any label differs or any value differs by more than the tolerance
    (default from the fixture, else 1e-5) times max(1, |expected|): absolute for
    probabilities, relative for large regression outputs."""
    model_dir, version, path = _fixture_path(repo, name, version)
    with open(path) as f:
        fixture = json.load(f)
    tol = tolerance if tolerance is not None else fixture.get("tolerance", 1e-5)
    model = Model(model_dir, version=version)
    inputs = {k: np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in fixture["inputs"].items()}
    got = model.predict(inputs, outputs=list(fixture["expected"]))
    report = {"model": model.name, "version": version, "rows": int(next(iter(inputs.values())).shape[0]),
              "tolerance": tol, "outputs": {}, "ok": True}
    for out_name, want in fixture["expected"].items():
        actual = got[out_name]
        expected = np.asarray(want["data"]).reshape(want["shape"])
        if want.get("kind") == "labels":
            same = [str(a) == str(b) for a, b in zip(actual.ravel().tolist(), expected.ravel().tolist())]
            entry = {"kind": "labels", "agreement": sum(same) / max(len(same), 1), "mismatches": len(same) - sum(same)}
            ok = entry["mismatches"] == 0
        else:
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            # Absolute for values up to 1 (probabilities), relative beyond (float32 rounding
            # of a regression output of 250 is ~3e-5).
            scale = np.maximum(np.abs(expected.astype(np.float64)), 1.0)
            entry = {"kind": "values", "max_abs_diff": float(diff.max(initial=0.0)),
                     "max_rel_diff": float((diff / scale).max(initial=0.0))}
            ok = entry["max_rel_diff"] <= tol
        entry["ok"] = ok
        report["outputs"][out_name] = entry
        report["ok"] &= ok
    if not report["ok"]:
        bad = {k: v for k, v in report["outputs"].items() if not v["ok"]}
        raise VerificationError(f"{model.name} v{version}: kiln differs from the Python model: {bad}", report)
    return report

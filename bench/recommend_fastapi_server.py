"""The Python prototype of the `recommend` example, as a team would write it before kiln:
FastAPI + uvicorn, the catalogue in numpy (exact inner-product search, as kiln's `items`
collection does for 5,000 items), features from the item table, the scikit-learn
GradientBoostingClassifier itself (`predict_proba`), the top 10 — answering the same v2-shaped
JSON as kiln so one load tool drives both.

    python bench/recommend_fastapi_server.py --port 8300 [--workers 2]
"""

import argparse
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

ROOT = Path(__file__).resolve().parents[1]
NAME = "recommend"
CANDIDATES, TOP = 200, 10
app = FastAPI()
ids = item_vectors = popularity = price = gbc = None
if os.environ.get("KILN_RECOMMEND_MODEL"):
    # The classifier the launcher trained (scripts/make_retrieval_demo.py's deterministic
    # training, the same that was exported), pickled once for every worker.
    with open(os.environ["KILN_RECOMMEND_MODEL"], "rb") as f:
        gbc = pickle.load(f)
    points = [json.loads(line) for line in open(ROOT / "examples" / "models" / "items" / "points.jsonl")]
    ids = np.array([p["id"] for p in points])
    item_vectors = np.array([p["vector"] for p in points], dtype=np.float32)
    popularity = np.array([p["payload"]["popularity"] for p in points], dtype=np.float32)
    price = np.array([p["payload"]["price"] for p in points], dtype=np.float32)


@app.get(f"/v2/models/{NAME}")
def metadata():
    return {"name": NAME, "inputs": [{"name": "user", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "items", "datatype": "BYTES", "shape": [-1, TOP]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, TOP]}]}


@app.post(f"/v2/models/{NAME}/infer")
async def infer(request: Request):
    body = await request.json()
    user = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(-1, 16)
    affinity = user @ item_vectors.T
    order = np.argsort(-affinity, axis=1, kind="stable")[:, :CANDIDATES]
    aff = np.take_along_axis(affinity, order, axis=1)
    features = np.stack([aff.reshape(-1), popularity[order].reshape(-1), price[order].reshape(-1)], axis=1)
    score = gbc.predict_proba(features)[:, 1].reshape(len(user), CANDIDATES)
    top = np.argsort(-score, axis=1, kind="stable")[:, :TOP]
    picked = np.take_along_axis(order, top, axis=1)
    return {"model_name": NAME, "outputs": [
        {"name": "items", "datatype": "BYTES", "shape": list(picked.shape), "data": ids[picked].reshape(-1).tolist()},
        {"name": "scores", "datatype": "FP32", "shape": list(top.shape),
         "data": np.take_along_axis(score, top, axis=1).reshape(-1).tolist()},
    ]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_retrieval_demo import build_recommend

    model_file = os.path.join(tempfile.mkdtemp(), "gbc.pkl")
    with open(model_file, "wb") as f:
        pickle.dump(build_recommend()["gbc"], f)
    os.environ["KILN_RECOMMEND_MODEL"] = model_file
    uvicorn.run("recommend_fastapi_server:app", app_dir=str(Path(__file__).parent), host="127.0.0.1",
                port=args.port, workers=args.workers, log_level="warning")

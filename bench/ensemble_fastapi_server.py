"""The fraud ensemble written the Python way: FastAPI + uvicorn + two onnxruntime sessions,
probabilities blended 70/30 in numpy, thresholded — answering v2-shaped JSON as
`fraud_ensemble` so one load tool drives both.

    python bench/ensemble_fastapi_server.py REPO --port 8300 [--workers 2]
"""

import argparse
import os

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()
REPO = os.environ.get("KILN_ENSEMBLE_REPO", "")
sessions = []
if REPO:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for name in ("fraud", "fraud_lr"):
        sessions.append(ort.InferenceSession(os.path.join(REPO, name, "1", "model.onnx"), options,
                                             providers=["CPUExecutionProvider"]))


@app.get("/v2/models/fraud_ensemble")
def metadata():
    return {"name": "fraud_ensemble", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "score", "datatype": "FP32", "shape": [-1, 1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}


@app.post("/v2/models/fraud_ensemble/infer")
async def infer(request: Request):
    body = await request.json()
    i = body["inputs"][0]
    x = np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])
    p_gbc = sessions[0].run(["probabilities"], {"input": x})[0]
    p_lr = sessions[1].run(["probabilities"], {"input": x})[0]
    blend = 0.7 * p_gbc + 0.3 * p_lr
    label = (blend[:, 1] >= 0.5).astype(np.int64)
    return {"model_name": "fraud_ensemble", "model_version": "1", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": list(label.shape), "data": label.tolist()},
        {"name": "score", "datatype": "FP32", "shape": [len(x), 1], "data": blend[:, 1].tolist()},
        {"name": "probabilities", "datatype": "FP32", "shape": list(blend.shape), "data": blend.ravel().tolist()}]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("repo")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["KILN_ENSEMBLE_REPO"] = os.path.abspath(args.repo)
    uvicorn.run("ensemble_fastapi_server:app", host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", app_dir=os.path.dirname(os.path.abspath(__file__)))

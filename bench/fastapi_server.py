"""The server a Python team would otherwise ship: FastAPI + uvicorn + onnxruntime, answering
KServe v2-shaped JSON for the models of a kiln repository, written the ordinary way.

    python bench/fastapi_server.py REPO --port 8100 [--workers 2]
"""

import argparse
import os

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}

app = FastAPI()
sessions = {}


def load(repo):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for name in sorted(os.listdir(repo)):
        versions = [v for v in os.listdir(os.path.join(repo, name)) if v.isdigit()]
        if not versions:
            continue
        path = os.path.join(repo, name, max(versions, key=int), "model.onnx")
        try:
            sessions[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a model that does not load is skipped
            pass


@app.get("/v2/models/{name}")
def metadata(name: str):
    s = sessions.get(name)
    if s is None:
        raise HTTPException(404, f"unknown model {name}")
    meta = lambda t: {"name": t.name, "datatype": ONNX_TO_V2.get(t.type, t.type),
                      "shape": [d if isinstance(d, int) else -1 for d in t.shape]}
    return {"name": name, "inputs": [meta(i) for i in s.get_inputs()],
            "outputs": [meta(o) for o in s.get_outputs() if o.type.startswith("tensor")]}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    s = sessions.get(name)
    if s is None:
        raise HTTPException(404, f"unknown model {name}")
    body = await request.json()
    feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
             for i in body["inputs"]}
    names = [o.name for o in s.get_outputs() if o.type.startswith("tensor")]
    results = s.run(names, feeds)
    outputs = []
    for n, r in zip(names, results):
        dt = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}.get(r.dtype, "BYTES")
        outputs.append({"name": n, "datatype": dt, "shape": list(r.shape), "data": r.ravel().tolist()})
    return {"model_name": name, "model_version": "1", "outputs": outputs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("repo")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["KILN_FASTAPI_REPO"] = args.repo
    uvicorn.run("fastapi_server:app", host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", app_dir=os.path.dirname(os.path.abspath(__file__)))
else:
    load(os.environ.get("KILN_FASTAPI_REPO", "examples/models"))

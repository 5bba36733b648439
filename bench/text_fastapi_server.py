"""The usual Python prototype of an embedding service: FastAPI + uvicorn + Hugging Face
`tokenizers` + onnxruntime, mean pooling and L2 normalization in numpy, answering the same
v2-shaped JSON as kiln (so one load tool drives both).

    python bench/text_fastapi_server.py MODEL_DIR --port 8200 [--workers 2]
"""

import argparse
import os

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from tokenizers import Tokenizer

app = FastAPI()
MODEL_DIR = os.environ.get("KILN_TEXT_MODEL_DIR", "")
NAME = "all-minilm-l6-v2"
tokenizer = session = None
if MODEL_DIR:
    tokenizer = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"), options, providers=["CPUExecutionProvider"])


@app.get(f"/v2/models/{NAME}")
def metadata():
    return {"name": NAME, "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]}


@app.post(f"/v2/models/{NAME}/infer")
async def infer(request: Request):
    body = await request.json()
    texts = body["inputs"][0]["data"]
    enc = tokenizer.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
    types = np.asarray([e.type_ids for e in enc], dtype=np.int64)
    (states,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[:1]
    m = mask[..., None].astype(np.float32)
    pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return {"model_name": NAME, "model_version": "1",
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": list(pooled.shape), "data": pooled.ravel().tolist()}]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["KILN_TEXT_MODEL_DIR"] = os.path.abspath(args.model_dir)
    uvicorn.run("text_fastapi_server:app", host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", app_dir=os.path.dirname(os.path.abspath(__file__)))

"""Raw ONNX Runtime from Python (onnxruntime.InferenceSession.run), one thread: the ceiling a
Python server cannot beat. Prints JSON: per batch size, calls/s and rows/s.

    python bench/ort_python.py MODEL.onnx [--seconds 3] [--batches 1,256]
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--seconds", type=float, default=3.0)
parser.add_argument("--batches", default="1,256")
args = parser.parse_args()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
width = inp.shape[1]
results = {}
for batch in [int(b) for b in args.batches.split(",")]:
    x = np.random.default_rng(7).random((batch, width), dtype=np.float32)
    for _ in range(200):
        session.run(None, {inp.name: x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        session.run(None, {inp.name: x})
        n += 1
    elapsed = time.perf_counter() - start
    results[batch] = {"calls_per_s": n / elapsed, "rows_per_s": n * batch / elapsed, "us_per_call": elapsed / n * 1e6}
print(json.dumps(results))

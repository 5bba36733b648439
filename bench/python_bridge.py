"""The Python bridge against onnxruntime's own Python binding, and the cost of a process
boundary. Run by bench/python_bridge.sh (which builds kiln and starts `kiln serve`).

    python bench/python_bridge.py [--seconds 2] [--http HOST:PORT --grpc HOST:PORT]
"""

import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort

import kiln

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=2.0)
parser.add_argument("--http")
parser.add_argument("--grpc")
args = parser.parse_args()


def rate(fn, seconds):
    """Calls per second of fn, single thread (best of 3 runs)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            fn()
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    return best


def threaded_rate(fn, seconds, threads=2):
    counts = [0] * threads
    stop = threading.Event()

    def loop(i):
        while not stop.is_set():
            fn()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


rows = []
for name, width in (("fraud", 30), ("digits_mlp", 64)):
    path = f"examples/models/{name}/1/model.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    model = kiln.Model(f"examples/models/{name}", threads=1, instances=2)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    for batch in (1, 256):
        x = np.random.default_rng(7).random((batch, width), dtype=np.float32)
        ort_call = lambda: session.run(outputs, {input_name: x})
        kiln_call = lambda: model.predict(x)
        for _ in range(500):
            ort_call(), kiln_call()
        o1, k1 = rate(ort_call, args.seconds), rate(kiln_call, args.seconds)
        o2, k2 = threaded_rate(ort_call, args.seconds), threaded_rate(kiln_call, args.seconds)
        rows.append({"model": name, "batch": batch, "ort_us": 1e6 / o1, "kiln_us": 1e6 / k1,
                     "kiln_vs_ort": k1 / o1, "ort_2threads_x": o2 / o1, "kiln_2threads_x": k2 / k1,
                     "kiln_rows_per_s": k1 * batch, "kiln_2t_rows_per_s": k2 * batch})

print("| model | batch | onnxruntime µs/call | kiln µs/call | kiln / onnxruntime speed | 2 threads vs 1: onnxruntime | 2 threads vs 1: kiln |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['model']} | {r['batch']} | {r['ort_us']:.1f} | {r['kiln_us']:.1f} | {r['kiln_vs_ort']:.2f}x | "
          f"{r['ort_2threads_x']:.2f}x | {r['kiln_2threads_x']:.2f}x |")

if args.http and args.grpc:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.random.default_rng(7).random((1, 30), dtype=np.float32)
    model = kiln.Model("examples/models/fraud", threads=1)
    http = httpclient.InferenceServerClient(url=args.http)
    grpc = grpcclient.InferenceServerClient(url=args.grpc)

    def via_http():
        i = httpclient.InferInput("input", [1, 30], "FP32")
        i.set_data_from_numpy(x)
        http.infer("fraud", [i])

    def via_grpc():
        i = grpcclient.InferInput("input", [1, 30], "FP32")
        i.set_data_from_numpy(x)
        grpc.infer("fraud", [i])

    for f in (via_http, via_grpc):
        for _ in range(200):
            f()
    inproc = 1e6 / rate(lambda: model.predict(x), args.seconds)
    h = 1e6 / rate(via_http, args.seconds)
    g = 1e6 / rate(via_grpc, args.seconds)
    print()
    print("| fraud, batch 1, one Python thread | µs per call | vs in-process |")
    print("|---|---|---|")
    print(f"| kiln.Model.predict (in-process) | {inproc:.1f} | 1.0x |")
    print(f"| tritonclient HTTP -> kiln serve | {h:.1f} | {h / inproc:.0f}x |")
    print(f"| tritonclient gRPC -> kiln serve | {g:.1f} | {g / inproc:.0f}x |")
print(json.dumps(rows), file=open("/dev/null", "w"))

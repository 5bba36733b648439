"""Vector search side by side: kiln's collection (HNSW via usearch, and exact) against the Python
prototype — FastAPI + faiss-cpu's IndexHNSWFlat with the same data and parameters — over HTTP,
in the same run. 100,000 × 384 clustered vectors (not uniform noise), cosine, M = 16,
ef_construction = 128, ef_search = 64, k = 10.

    .venv/bin/python bench/vector_search.py [--points 100000] [--queries 500]

Prints markdown rows: build (load) time, durable upserts/s, memory per vector, recall@10 against
numpy's exact answer, queries/s and p99 with 1 and 16 concurrent callers.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "release" / "kiln"))
DIM, K, M, EF_C, EF_S = 384, 10, 16, 128, 64

FAISS_SERVER = r'''
import faiss, numpy as np, sys
from fastapi import FastAPI, Request
faiss.omp_set_num_threads(1)
app = FastAPI()
index = faiss.IndexHNSWFlat(%(dim)d, %(m)d, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = %(efc)d
index.hnsw.efSearch = %(efs)d
ids = []
@app.put("/points")
async def upsert(request: Request):
    body = await request.json()
    v = np.asarray([p["vector"] for p in body["points"]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index.add(v)
    ids.extend(p["id"] for p in body["points"])
    return {"upserted": len(v)}
@app.post("/search")
async def search(request: Request):
    body = await request.json()
    q = np.asarray([body["vector"]], dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, found = index.search(q, body.get("k", 10))
    return {"results": [{"id": ids[i], "score": float(s)} for s, i in zip(scores[0], found[0]) if i >= 0]}
# The same search, v2-shaped (as kiln's collection answers it), so `kiln bench` drives both.
@app.get("/v2/models/hnsw")
def metadata():
    return {"name": "hnsw", "inputs": [{"name": "query", "datatype": "FP32", "shape": [-1, %(dim)d]}],
            "outputs": [{"name": "ids", "datatype": "BYTES", "shape": [-1, 10]}, {"name": "scores", "datatype": "FP32", "shape": [-1, 10]}]}
@app.post("/v2/models/hnsw/infer")
async def infer(request: Request):
    body = await request.json()
    q = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(-1, %(dim)d)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, found = index.search(q, 10)
    return {"model_name": "hnsw", "outputs": [
        {"name": "ids", "datatype": "BYTES", "shape": list(found.shape), "data": [ids[i] if i >= 0 else "" for i in found.reshape(-1)]},
        {"name": "scores", "datatype": "FP32", "shape": list(scores.shape), "data": scores.reshape(-1).tolist()}]}
'''


def clustered(n, dim, seed, centers=256):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, dim)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    which = rng.integers(0, centers, n)
    spread = rng.uniform(0.02, 0.06, n).astype(np.float32)[:, None]
    x = middle[which] + rng.normal(size=(n, dim)).astype(np.float32) * spread
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def wait(url, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def load(put_url, data, batch=2048):
    session = requests.Session()
    start = time.perf_counter()
    for s in range(0, len(data), batch):
        points = [{"id": f"p{i}", "vector": data[i].tolist()} for i in range(s, min(s + batch, len(data)))]
        r = session.put(put_url, data=json.dumps({"points": points}), headers={"content-type": "application/json"}, timeout=600)
        r.raise_for_status()
    return time.perf_counter() - start


def run_queries(search_url, queries, callers):
    latencies = []
    lock = threading.Lock()
    answers = [None] * len(queries)

    def one(i):
        session = one.sessions.setdefault(threading.get_ident(), requests.Session())
        t = time.perf_counter()
        r = session.post(search_url, data=json.dumps({"vector": queries[i].tolist(), "k": K}), headers={"content-type": "application/json"}, timeout=60)
        elapsed = time.perf_counter() - t
        r.raise_for_status()
        answers[i] = [int(h["id"][1:]) for h in r.json()["results"]]
        with lock:
            latencies.append(elapsed)

    one.sessions = {}
    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(one, range(len(queries))))
    wall = time.perf_counter() - start
    return len(queries) / wall, float(np.percentile(latencies, 99) * 1000), answers


def bench(url, body, callers, protocol, seconds=8):
    out = subprocess.run([KILN, "bench", "hnsw", "--url", url, "--protocol", protocol, "--input", str(body),
                          "-c", str(callers), "-d", str(seconds), "--warmup", "1", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def recall(answers, truth):
    return float(np.mean([len(set(a) & set(t)) / K for a, t in zip(answers, truth)]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    # Queries from the same clusters as the data (held out, not indexed).
    both = clustered(args.points + args.queries, DIM, seed=1)
    data, queries = both[:args.points], both[args.points:]
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :K]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        repo = scratch / "models"
        for name, exact in (("hnsw", False), ("exact", True)):
            (repo / name).mkdir(parents=True)
            settings = "exact = true\n" if exact else f"m = {M}\nef_construction = {EF_C}\nef_search = {EF_S}\n"
            (repo / name / "config.toml").write_text(f'kind = "vector_index"\n[index]\ndim = {DIM}\nmetric = "cosine"\n{settings}')
        kiln = subprocess.Popen([KILN, "serve", str(repo), "--http-port", "18500", "--grpc-port", "18501", "--records", "off",
                                 "--points", f"sqlite:{scratch / 'points.sqlite'}", "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        faiss_file = scratch / "faiss_server.py"
        faiss_file.write_text(FAISS_SERVER % {"dim": DIM, "m": M, "efc": EF_C, "efs": EF_S})
        fast = subprocess.Popen([sys.executable, "-m", "uvicorn", "faiss_server:app", "--port", "18502", "--log-level", "warning"],
                                cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait("http://127.0.0.1:18500/v2/health/ready")
            wait("http://127.0.0.1:18502/docs")
            base_kiln, base_fast = rss_mb(kiln.pid), rss_mb(fast.pid)
            kiln_load = load("http://127.0.0.1:18500/v1/collections/hnsw/points", data)
            kiln_mem = rss_mb(kiln.pid) - base_kiln
            info = requests.get("http://127.0.0.1:18500/v1/collections/hnsw", timeout=10).json()
            fast_load = load("http://127.0.0.1:18502/points", data)
            fast_mem = rss_mb(fast.pid) - base_fast
            exact_load = load("http://127.0.0.1:18500/v1/collections/exact/points", data)
            n = len(data)
            print(f"| load {n} points (2048 a request) | kiln HNSW {kiln_load:.1f} s ({n / kiln_load:,.0f} durable upserts/s) | "
                  f"FastAPI+faiss {fast_load:.1f} s ({n / fast_load:,.0f}/s, not durable) | kiln exact {exact_load:.1f} s |")
            print(f"| memory per vector | kiln HNSW {info['memory_bytes'] / n:,.0f} B (index), RSS +{kiln_mem * 1e6 / n:,.0f} B | "
                  f"faiss RSS +{fast_mem * 1e6 / n:,.0f} B | raw vector {DIM * 4} B |")
            for callers in (1, 16):
                for label, url in (("kiln HNSW", "http://127.0.0.1:18500/v1/collections/hnsw/search"),
                                   ("FastAPI + faiss HNSW", "http://127.0.0.1:18502/search"),
                                   ("kiln exact", "http://127.0.0.1:18500/v1/collections/exact/search")):
                    qps, p99, answers = run_queries(url, queries, callers)
                    rows.append((callers, label, qps, p99, recall(answers, truth)))
            print("| callers | server | queries/s | p99 ms | recall@10 |")
            print("|---|---|---|---|---|")
            for callers, label, qps, p99, r in rows:
                print(f"| {callers} | {label} | {qps:,.0f} | {p99:.1f} | {r:.3f} |")
            # The Python client above costs ~1 ms of CPU a query on the same 2 cores: it caps
            # both servers. `kiln bench` (Rust, closed loop) sends the v2 search both answer.
            body = scratch / "query.json"
            body.write_text(json.dumps({"inputs": [{"name": "query", "datatype": "FP32", "shape": [1, DIM],
                                                    "data": queries[0].tolist()}]}))
            print("\n| callers | server (v2 JSON, `kiln bench`) | queries/s | p50 ms | p99 ms | errors |")
            print("|---|---|---|---|---|---|")
            for callers in (1, 16):
                for label, url, protocol in (("kiln HNSW", "127.0.0.1:18500", "rest-json"),
                                             ("kiln HNSW, binary tensors", "127.0.0.1:18500", "rest-binary"),
                                             ("FastAPI + faiss HNSW", "127.0.0.1:18502", "rest-json")):
                    r = bench(url, body, callers, protocol)
                    print(f"| {callers} | {label} | {r['throughput']:,.0f} | {r['latency_us']['p50'] / 1000:.2f} | "
                          f"{r['latency_us']['p99'] / 1000:.2f} | {r['errors']} |")
        finally:
            kiln.terminate()
            fast.terminate()
            kiln.wait(timeout=30)
            fast.wait(timeout=30)


if __name__ == "__main__":
    main()

"""Turns bench/scheduler.sh's rows into the markdown table and the issue #16 ratios.

Row: server setting model callers protocol value p50_ms p99_ms errors
"""

import sys

path, secs = sys.argv[1], sys.argv[2]
rows = []
for line in open(path):
    f = line.split()
    if len(f) == 9:
        rows.append(dict(server=f[0], setting=f[1], model=f[2], callers=f[3], protocol=f[4],
                         value=float(f[5]), p50=float(f[6]), p99=float(f[7]), errors=int(f[8])))


def get(server, setting, model, callers, protocol):
    for r in rows:
        if (r["server"], r["setting"], r["model"], r["callers"], r["protocol"]) == (server, setting, model, str(callers), protocol):
            return r
    return None


def verdict(ok):
    return "met" if ok else "**not met**"


out = [f"Scheduler benchmark (bench/scheduler.sh), {secs} s per row, wrk -t1 (REST JSON) and h2load -t1 (gRPC), 2 cores shared with the load tool.", ""]
out += ["| server | setting | model | callers | protocol | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if r["protocol"] in ("rest", "grpc") and r["setting"] != "empty-exchange":
        out.append(f"| {r['server']} | {r['setting']} | {r['model']} | {r['callers']} | {r['protocol']} | {r['value']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} |")

out += ["", "| check | figure | target | |", "|---|---|---|---|"]
for model in ("digits_mlp", "fraud"):
    base, best = get("kiln", "1inst-batch-off", model, 32, "rest"), get("kiln", "2inst-batch-on", model, 32, "rest")
    if base and best:
        t, p = best["value"] / base["value"], best["p99"] / max(base["p99"], 1e-9)
        out.append(f"| {model}: kiln 2 instances + batching / 1 instance no batching, 32 callers, REST | {t:.2f}x req/s, {p:.2f}x p99 | >= 0.95x, <= 1.2x | {verdict(t >= 0.95 and p <= 1.2)} |")
for model in ("digits_mlp", "fraud"):
    for protocol, target in (("rest", 1.6), ("grpc", 1.8)):
        for setting in ("1inst-batch-off", "1inst-batch-on", "2inst-batch-off", "2inst-batch-on"):
            k, t = get("kiln", setting, model, 32, protocol), get("triton", setting, model, 32, protocol)
            if k and t and t["value"] > 0:
                ratio = k["value"] / t["value"]
                out.append(f"| {model} {setting} {protocol}: kiln / Triton | {ratio:.2f}x req/s, p99 {k['p99']:.2f} vs {t['p99']:.2f} ms | >= {target}x at p99 <= Triton's | {verdict(ratio >= target and k['p99'] <= t['p99'])} |")
for model in ("digits_wide", "digits_mlp", "fraud"):
    on, off = get("kiln", "2inst-batch-on", model, 128, "rest"), get("kiln", "1inst-batch-off", model, 128, "rest")
    if on and off:
        r = on["value"] / off["value"]
        target, ok = (">= 1.5x (batching pays)", r >= 1.5) if model == "digits_wide" else (">= 0.95x (never hurts)", r >= 0.95)
        out.append(f"| {model}: 128 callers, batching on (2 instances) / off (1 instance), REST | {r:.2f}x req/s, p99 {on['p99']:.1f} vs {off['p99']:.1f} ms | {target} | {verdict(ok)} |")
empty = get("kiln", "empty-exchange", "-", 32, "rest")
served = get("kiln", "1inst-batch-off", "digits_mlp", 32, "rest")
if empty and served:
    r = served["value"] / empty["value"]
    out.append(f"| digits_mlp REST / empty exchange (GET /v2/health/live {empty['value']:.0f} req/s) | {r:.2f}x | >= 0.65x | {verdict(r >= 0.65)} |")
for model in ("digits_mlp", "fraud"):
    ort, k = get("ort-python", "in-process", model, 1, "call"), get("kiln", "in-process", model, 1, "call")
    if ort and k:
        r = k["value"] / ort["value"]
        out.append(f"| {model}: in-process batch 1 through the engine / raw ONNX Runtime from Python | {k['value']:.0f} / {ort['value']:.0f} calls/s = {r:.2f}x | >= 0.5x | {verdict(r >= 0.5)} |")
for repo, what in (("sixteen", "16 models (4 x fraud, digits_mlp, breast_cancer, digits_wide)"), ("sixteen-wide", "16 x digits_wide (4 MB each)")):
    starts = [r for r in rows if r["setting"] == repo]
    for loaders in ("loaders-1", "loaders-default"):
        times = [r["value"] for r in starts if r["model"] == loaders]
        if times:
            label = "one at a time (KILN_LOAD_THREADS=1, as before)" if loaders == "loaders-1" else "in parallel (one loader per core)"
            out.append(f"| {what}, time to ready, {label} | {' / '.join('%.2f s' % t for t in times)} | | |")
print("\n".join(out))

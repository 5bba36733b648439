"""LLM applications on kiln (issue #18), against one running `kiln serve` whose repository holds
smollm2, ticket_urgency, ticket_fields (local LLM step) and ticket_fields_url (the same step
through `url` to this server's own /v1). Prints one JSON object; bench/llm_structured.sh runs it.

1. The cost of constraining: decode tokens/s of streamed greedy answers of 128 tokens, free text
   against a JSON schema (an array of up to 40 items, long enough never to end early), 1 stream
   and 8 concurrent streams, best of 3 rounds each.
2. Schema-valid rate: the 22 tickets x 3 schemas of the test suite, with the schema enforced and
   without it (the schema in the system prompt both times), greedy.
3. The ticket_fields pipeline with its LLM step local (in-process, the model's queue) against the
   same step through `url` (an HTTP hop to kiln's own endpoint): one ticket per request, 8
   callers, all 22 tickets twice; requests/s and p50 latency.
"""

import argparse
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python" / "tests"))
from test_llm_structured import SCHEMAS, TICKETS, instructions, valid  # noqa: E402

LONG = {"type": "object", "properties": {"items": {"type": "array", "minItems": 40, "maxItems": 40, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                     "quantity": {"type": "integer", "minimum": 1, "maximum": 999}},
    "required": ["name", "quantity"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False}
PROMPTS = [
    "List the groceries for a big family dinner, with quantities.",
    "List the parts needed to build a wooden bookshelf, with quantities.",
    "List what to pack for two weeks of camping, with quantities.",
    "List the supplies a new school classroom needs, with quantities.",
    "List the ingredients of ten cakes for a bakery, with quantities.",
    "List the tools in a well equipped garage, with quantities.",
    "List the items a small office orders each month, with quantities.",
    "List the plants to buy for a large garden, with quantities.",
]


def post(port, path, body, stream=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if not stream:
        data = json.loads(r.read())
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {data}")
        return data
    return conn, r


def decode_rate(port, prompt, schema):
    """Decode tokens/s of one streamed answer of 128 tokens (first to last token)."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 128,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if schema:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "list", "schema": schema}}
    conn, r = post(port, "/v1/chat/completions", body, stream=True)
    times, tokens = [], None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    conn.close()
    return tokens, (tokens - 1) / (times[-1] - times[0])


def rates(port, schema, streams):
    best = None
    for _ in range(3):
        with ThreadPoolExecutor(streams) as pool:
            got = list(pool.map(lambda p: decode_rate(port, p, schema), PROMPTS[:streams]))
        assert all(t == 128 for t, _ in got), f"an answer ended before 128 tokens: {got}"
        per_stream = statistics.mean(r for _, r in got)
        best = per_stream if best is None else max(best, per_stream)
    return best


def valid_rate(port, schema, constrained):
    def one(ticket):
        body = {"model": "smollm2", "temperature": 0, "max_tokens": 200,
                "messages": [{"role": "system", "content": instructions(schema)}, {"role": "user", "content": ticket}]}
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
        return valid(post(port, "/v1/chat/completions", body)["choices"][0]["message"]["content"], schema)
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, TICKETS))


def pipeline(port, name, callers=8):
    def one(ticket):
        t = time.perf_counter()
        post(port, f"/v2/models/{name}/infer",
             {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [ticket]}]})
        return time.perf_counter() - t
    one(TICKETS[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        latencies = list(pool.map(one, TICKETS * 2))
    wall = time.perf_counter() - started
    return {"rps": len(latencies) / wall, "p50_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    port = args.port
    decode_rate(port, PROMPTS[0], LONG)  # warm-up (and the vocabulary index)
    out = {}
    for streams in (1, 8):
        free = rates(port, None, streams)
        constrained = rates(port, LONG, streams)
        out[f"decode_{streams}"] = {"free": free, "schema": constrained, "cost": 1 - constrained / free}
    out["valid"] = {name: {"constrained": valid_rate(port, s, True), "free": valid_rate(port, s, False),
                           "of": len(TICKETS)} for name, s in SCHEMAS.items()}
    out["pipeline"] = {"local": pipeline(port, "ticket_fields"), "url": pipeline(port, "ticket_fields_url")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

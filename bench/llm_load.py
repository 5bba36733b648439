"""Streams chat completions from an OpenAI-compatible server, or from llama.cpp in-process through
llama-cpp-python's `Llama`, and reports per-stream decode speed, aggregate throughput and time to
first token. Used by bench/llm.sh; prints one JSON object.

  python bench/llm_load.py --url http://127.0.0.1:8000/v1 --model smollm2 --streams 8
  python bench/llm_load.py --in-process GGUF --streams 1 --repeat 3

Decode tokens/s of a stream = (its tokens - 1) / (last token time - first token time): the
generation speed without the prompt. Aggregate tokens/s = all tokens / wall time of the run.
Each content chunk is one token for kiln and llama.cpp; usage's completion_tokens is the count."""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works to a ten-year-old, step by step.",
    "Describe a walk through a busy market in a large city in the morning.",
    "Write a letter to a friend about a trip to the mountains last summer.",
    "Explain why the sky is blue and why sunsets are red, in simple words.",
    "Describe how to bake a loaf of bread at home, from flour to the first slice.",
    "Write a short story about a robot that learns to paint.",
    "Explain the water cycle and why it matters for farming.",
]


WARM_UP = "Say hello."


def stream_http(url, model, prompt, max_tokens, out, system=SYSTEM):
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    body = json.dumps({"model": model, "messages": [system, {"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    started = time.perf_counter()
    conn.request("POST", parsed.path + "/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    times, usage = [], None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("delta") or {}).get("content"):
            times.append(time.perf_counter())
    conn.close()
    tokens = usage["completion_tokens"] if usage else len(times)
    out.append({"started": started, "times": times, "tokens": tokens, "prompt_tokens": usage["prompt_tokens"] if usage else 0})


def stream_in_process(llm, prompt, max_tokens, out):
    started = time.perf_counter()
    times = []
    for chunk in llm.create_chat_completion([SYSTEM, {"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0.0, stream=True):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    out.append({"started": started, "times": times, "tokens": len(times)})


def run(args):
    results = []
    if args.in_process:
        import llama_cpp

        llm = llama_cpp.Llama(args.in_process, n_ctx=2048, n_threads=args.threads, verbose=False)
        go = lambda p: stream_in_process(llm, p, args.max_tokens, results)
    else:
        system = SYSTEM
        if args.long_system:
            # A ~300-token system prompt every request shares (an assistant's instructions).
            system = {"role": "system", "content": " ".join(
                f"Rule {i}: answer clearly, cite the source, keep it short and polite." for i in range(1, 26))}
        go = lambda p: stream_http(args.url, args.model, p, args.max_tokens, results, system)
    # Warm-up with a prompt the run does not use: llama-cpp-python keeps the last prompt's KV
    # cache and would skip a repeated prompt's prefill (the shared system prefix it may reuse).
    go(WARM_UP)
    rounds = []
    for round_ in range(args.repeat):
        results.clear()
        # Every prompt of the run is new (a numbered ending), so no server answers from a
        # cached earlier prompt; what they share is the system prompt and the template.
        prompts = [f"{PROMPTS[(round_ + i) % len(PROMPTS)]} (Request {round_ * args.streams + i + 1}.)"
                   for i in range(args.streams)]
        begin = time.perf_counter()
        threads = [threading.Thread(target=go, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - begin
        decode = [(len(r["times"]) - 1) / (r["times"][-1] - r["times"][0]) for r in results if len(r["times"]) > 1]
        ttft = [(r["times"][0] - r["started"]) * 1000 for r in results if r["times"]]
        tokens = sum(r["tokens"] for r in results)
        rounds.append({
            # What the server made of the messages: servers compared must see the same prompt.
            "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in results),
            "tokens": tokens,
            # A server that drops streams (llama-cpp-python's interrupt_requests) shows here.
            "fewest_tokens_in_a_stream": min(r["tokens"] for r in results),
            "wall_s": wall,
            "aggregate_tokens_per_s": tokens / wall,
            "decode_tokens_per_s_per_stream": statistics.mean(decode),
            "ttft_ms_p50": statistics.median(ttft),
            "ttft_ms_max": max(ttft),
        })
    # The median round of each figure (rounds differ by ±15 % on a shared 2-core machine).
    summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    summary["streams"] = args.streams
    summary["rounds"] = len(rounds)
    print(json.dumps(summary))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--in-process", metavar="GGUF")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median round's")
    p.add_argument("--long-system", action="store_true", help="a ~300-token system prompt shared by every request")
    run(p.parse_args())

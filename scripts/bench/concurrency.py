#!/usr/bin/env python3
"""N streamed chat completions at once against an OpenAI-compatible server.

Used by scripts/bench/vs-llama-server.sh to drive `spillway serve` and `llama-server` with
the same requests. Every stream gets its own prompt (distinct, so no prefix is shared) and
asks for exactly --max-tokens tokens. Prints one JSON object: the aggregate generation rate
(every stream's tokens over the time from the last first token to the first end: the window
in which all streams decode together, as `spillway bench --concurrency` measures it), the
wall-clock rate (all tokens over the whole run), and the time to first token.

Only the standard library and the `openai` package (scripts/requirements.txt).
"""

import argparse
import json
import threading
import time

from openai import OpenAI


def one_stream(client, model, prompt, max_tokens, extra, out, i, start):
    first = None
    stamps = []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=1.0,
        seed=i,
        stream=True,
        extra_body=extra,
    )
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or ""):
            now = time.perf_counter()
            if first is None:
                first = now
            stamps.append(now)
    out[i] = {"first": first, "end": time.perf_counter(), "stamps": stamps}


def run(base_url, model, streams, max_tokens, prompt_words, extra):
    client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=3600)
    words = "lighthouse keeper storm lens ship harbour night tide rock signal".split()
    prompts = [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(prompt_words)) + f" #{i}"
        for i in range(streams)
    ]
    out = [None] * streams
    start = time.perf_counter()
    threads = [
        threading.Thread(
            target=one_stream,
            args=(client, model, prompts[i], max_tokens, extra, out, i, start),
        )
        for i in range(streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(o["end"] for o in out)
    last_first = max(o["first"] for o in out)
    first_end = min(o["end"] for o in out)
    # Content deltas are tokens on both servers (one per token).
    tokens = sum(len(o["stamps"]) for o in out)
    window = first_end - last_first
    in_window = sum(1 for o in out for t in o["stamps"] if last_first < t <= first_end)
    return {
        "streams": streams,
        "tokens": tokens,
        "aggregate_tokens_per_s": in_window / window if window > 0 else None,
        "wall_tokens_per_s": tokens / (end - start),
        "ttft_ms_mean": sum((o["first"] - start) * 1e3 for o in out) / streams,
        "ttft_ms_worst": (last_first - start) * 1e3,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="auto", help="model name (default: the server's first)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=24)
    p.add_argument("--extra", default="{}", help="JSON merged into each request body")
    a = p.parse_args()
    extra = json.loads(a.extra)
    if a.model == "auto":
        # The server's own name for its model (spillway refuses names it does not serve).
        a.model = OpenAI(base_url=a.base_url, api_key="none").models.list().data[0].id
    run(a.base_url, a.model, 1, 4, 4, extra)  # warm-up: weights paged in, threads spun up
    for n in a.streams:
        print(json.dumps(run(a.base_url, a.model, n, a.max_tokens, a.prompt_words, extra)), flush=True)


if __name__ == "__main__":
    main()

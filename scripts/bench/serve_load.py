"""Load for an OpenAI-compatible server: N concurrent streamed /v1/completions requests, each a
distinct prompt of about PROMPT_CHARS characters and MAX_TOKENS tokens, ROUNDS times; prints one
JSON line per level: aggregate generated tok/s over the level's wall time, time to first token
(p50 / p99 over every request), and each stream's decode tok/s (after its first token).

usage: serve_load.py URL MODEL LEVELS ROUNDS MAX_TOKENS [EXTRA_JSON]
  LEVELS: comma-separated stream counts, e.g. 1,2,4,8,16
  EXTRA_JSON: fields merged into every request (e.g. {"ignore_eos": true} for llama-server)

Standard library only: http.client on one thread per stream.
"""

import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

PROMPT = "The quick brown fox jumps over the lazy dog, again and again ..."


def one(url, model, max_tokens, extra, i, out, slot):
    u = urlparse(url)
    body = {
        "model": model,
        # Distinct prompts (no server may reuse another request's prefix); 63 characters.
        "prompt": f"{i:04d} {PROMPT}"[: len(PROMPT)],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra)
    if not body["stream"]:
        body.pop("stream_options")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    start = time.perf_counter()
    conn.request(
        "POST",
        u.path.rstrip("/") + "/completions",
        json.dumps(body),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    if resp.status != 200:
        out[slot] = {"error": f"{resp.status}: {resp.read()[:300]!r}"}
        return
    if not body["stream"]:
        # A whole answer: no time to first token, only the total.
        answer = json.loads(resp.read())
        end = time.perf_counter()
        conn.close()
        out[slot] = {"start": start, "first": None, "last": end, "end": end,
                     "tokens": answer["usage"]["completion_tokens"], "usage_reported": True}
        return
    first = None
    last = None
    usage = None
    chunks = 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        now = time.perf_counter()
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]
        if event.get("choices"):
            chunks += 1
            if first is None:
                first = now
            last = now
    end = time.perf_counter()
    conn.close()
    tokens = usage["completion_tokens"] if usage else chunks
    out[slot] = {
        "start": start,
        "first": first if first is not None else end,
        "last": last if last is not None else end,
        "end": end,
        "tokens": tokens,
        "usage_reported": usage is not None,
    }


def percentile(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    url, model, levels, rounds, max_tokens = sys.argv[1:6]
    extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    seq = 0
    for n in [int(x) for x in levels.split(",")]:
        results = []
        wall = 0.0
        for _ in range(int(rounds)):
            out = [None] * n
            # Prompts distinct across rounds and levels as well.
            threads = [
                threading.Thread(
                    target=one, args=(url, model, int(max_tokens), extra, seq + k, out, k)
                )
                for k in range(n)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall += time.perf_counter() - t0
            seq += n
            errors = [r for r in out if r is None or "error" in r]
            if errors:
                print(json.dumps({"streams": n, "errors": errors[:3]}), flush=True)
                sys.exit(1)
            results.extend(out)
        tokens = sum(r["tokens"] for r in results)
        ttft = [r["first"] - r["start"] for r in results if r["first"] is not None]
        decode = [
            (r["tokens"] - 1) / (r["last"] - r["first"])
            for r in results
            if r["first"] is not None and r["last"] > r["first"] and r["tokens"] > 1
        ]
        print(
            json.dumps(
                {
                    "streams": n,
                    "requests": len(results),
                    "tokens": tokens,
                    "wall_s": round(wall, 3),
                    "aggregate_tps": round(tokens / wall, 2),
                    "ttft_p50_s": round(percentile(ttft, 0.5), 3) if ttft else None,
                    "ttft_p99_s": round(percentile(ttft, 0.99), 3) if ttft else None,
                    "stream_decode_tps_median": round(statistics.median(decode), 2)
                    if decode
                    else None,
                    "usage_reported": all(r["usage_reported"] for r in results),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

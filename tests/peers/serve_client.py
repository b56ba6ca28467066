"""Drives `mlxk serve` with the official `openai` client, as a user's script would.

usage: serve_client.py BASE_URL PLAN_JSON  (prints one JSON result)

PLAN is {"api_key": str|null, "ops": [op, ...]}; each op is one of
  {"op": "models"}
  {"op": "request", "request": R}
  {"op": "concurrent", "requests": [R, ...]}        all at once, on threads
  {"op": "hangup", "request": R, "after_chunks": n} stream, read n chunks, close
  {"op": "error", "request": R}                      expects an APIStatusError
with R = {"kind": "chat"|"complete", "stream": bool, "args": {...}} (args go to create()).
"""

import json
import sys
import threading

import openai


def run_request(client, r):
    kind, stream, args = r["kind"], r.get("stream", False), dict(r["args"])
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    if not stream:
        resp = create(stream=False, **args)
        choice = resp.choices[0]
        text = choice.message.content if kind == "chat" else choice.text
        # A reasoning model's thinking: an extra field the client keeps as an attribute.
        reasoning = getattr(choice.message, "reasoning_content", None) if kind == "chat" else None
        return {
            "id": resp.id,
            "object": resp.object,
            "model": resp.model,
            "text": text,
            "reasoning": reasoning,
            "finish_reason": choice.finish_reason,
            "usage": resp.usage.model_dump() if resp.usage else None,
        }
    text, finish, usage, chunks, roles, reasoning = "", None, None, 0, [], None
    for chunk in create(stream=True, **args):
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        if kind == "chat":
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            piece = getattr(c.delta, "reasoning_content", None)
            if piece is not None:
                reasoning = (reasoning or "") + piece
        else:
            text += c.text or ""
        if c.finish_reason:
            finish = c.finish_reason
    return {
        "text": text,
        "reasoning": reasoning,
        "finish_reason": finish,
        "usage": usage,
        "chunks": chunks,
        "roles": roles,
    }


def hangup(client, r, after):
    kind, args = r["kind"], dict(r["args"])
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    stream = create(stream=True, **args)
    seen = 0
    for _ in stream:
        seen += 1
        if seen >= after:
            break
    stream.close()
    return {"chunks_read": seen}


def expect_error(client, r):
    try:
        run_request(client, r)
    except openai.APIStatusError as e:
        body = e.response.json()
        return {"status": e.status_code, "body": body, "class": type(e).__name__}
    return {"status": None}


def main():
    base, plan = sys.argv[1], json.loads(sys.argv[2])
    client = openai.OpenAI(
        base_url=base, api_key=plan.get("api_key") or "none", max_retries=0, timeout=300
    )
    results = []
    for op in plan["ops"]:
        kind = op["op"]
        if kind == "models":
            results.append([m.model_dump() for m in client.models.list().data])
        elif kind == "request":
            results.append(run_request(client, op["request"]))
        elif kind == "concurrent":
            out = [None] * len(op["requests"])
            barrier = threading.Barrier(len(out))

            def worker(i, r):
                barrier.wait()
                try:
                    out[i] = run_request(client, r)
                except Exception as e:  # reported, and the test fails on it
                    out[i] = {"exception": repr(e)}

            threads = [
                threading.Thread(target=worker, args=(i, r))
                for i, r in enumerate(op["requests"])
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results.append(out)
        elif kind == "hangup":
            results.append(hangup(client, op["request"], op["after_chunks"]))
        elif kind == "error":
            results.append(expect_error(client, op["request"]))
        else:
            raise SystemExit(f"unknown op {kind}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

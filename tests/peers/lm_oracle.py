"""mlx-lm as the oracle of `mlxk run`: in one process, converts models (mlx_lm.convert) and runs
them greedily, recording the logits at every step (after the prompt, then after each generated
token: the teacher-forcing reference), and renders chat templates with transformers.

usage: lm_oracle.py JOBS.json  ->  prints a JSON list of results, one per job
Jobs: {"convert": {"src", "dst", "args"}}
      | {"generate": {"model", "prompt_ids", "steps", "upcast"?}}
      | {"template": {"model", "messages"}}
"""
import contextlib
import io
import json
import sys

import mlx.core as mx
import numpy as np
from mlx_lm import load
from mlx_lm.convert import convert


def generate(model_dir, prompt_ids, steps, upcast=False):
    model, _ = load(model_dir)
    if upcast:
        # Every float parameter (and so every activation) in float32: the reference for an
        # engine that widens half weights and computes in f32.
        model.set_dtype(mx.float32)
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    tokens, logits = [], []
    x = mx.array([prompt_ids])
    for _ in range(steps):
        out = model(x, cache=cache)[0, -1].astype(mx.float32)
        mx.eval(out)
        row = np.array(out)
        logits.append([float(v) for v in row])
        nxt = int(np.argmax(row))
        tokens.append(nxt)
        x = mx.array([[nxt]])
    return {"tokens": tokens, "logits": logits}


def template(model_dir, messages):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return {
        "text": tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    }


def main():
    mx.set_default_device(mx.cpu)
    results = []
    for job in json.load(open(sys.argv[1])):
        try:
            if "convert" in job:
                c = job["convert"]
                with contextlib.redirect_stdout(io.StringIO()):
                    convert(hf_path=c["src"], mlx_path=c["dst"], **c["args"])
                results.append({"ok": True})
            elif "generate" in job:
                g = job["generate"]
                results.append(
                    generate(g["model"], g["prompt_ids"], g["steps"], g.get("upcast", False))
                )
            else:
                t = job["template"]
                results.append(template(t["model"], t["messages"]))
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    print(json.dumps(results))


main()

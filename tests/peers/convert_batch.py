"""Runs mlx-lm's converter on a batch of jobs in one process (one import of mlx / transformers
instead of one per job), compares every result with mlxk's output for the same job, and (when
asked) loads both with mlx_lm.load and generates greedily from each.

usage: convert_batch.py JOBS.json   ->  prints a JSON list of results, one per job

A job: {"src", "ours", "theirs", "args": {convert() keyword arguments}, "generate": N}
"""
import contextlib
import io
import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.convert import convert
from mlx_lm.generate import generate
from mlx_lm.sample_utils import make_sampler

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from compare_models import compare  # noqa: E402


def greedy(path, n):
    model, tokenizer = load(path)
    out = []
    prompt = tokenizer.encode("hello world")
    from mlx_lm.generate import generate_step

    for token, _ in generate_step(
        mx.array(prompt), model, max_tokens=n, sampler=make_sampler(temp=0.0)
    ):
        out.append(int(token))
    return out


def main():
    mx.set_default_device(mx.cpu)
    jobs = json.load(open(sys.argv[1]))
    results = []
    for job in jobs:
        result = {"name": job["name"]}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert(hf_path=job["src"], mlx_path=job["theirs"], **job["args"])
            result.update(compare(job["ours"], job["theirs"]))
        except Exception as e:  # reported, asserted by the Rust test
            result["error"] = f"{type(e).__name__}: {e}"
        if job.get("generate") and "error" not in result:
            try:
                result["tokens_ours"] = greedy(job["ours"], job["generate"])
                result["tokens_theirs"] = greedy(job["theirs"], job["generate"])
            except Exception as e:
                result["error"] = f"generation: {type(e).__name__}: {e}"
        results.append(result)
    print(json.dumps(results))


main()

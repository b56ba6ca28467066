"""mlx-lm as the oracle of `mlxk run`: in one process, converts models (mlx_lm.convert) and runs
them greedily, recording the logits at every step (after the prompt, then after each generated
token: the teacher-forcing reference), and renders chat templates with transformers.

usage: lm_oracle.py JOBS.json  ->  prints a JSON list of results, one per job
Jobs: {"make": {"dst", "config", "seed", "std", "norm_mean", "tokenizer_from", "drop"?,
                "extra"?, "config_extra"?}}
      | {"convert": {"src", "dst", "args"}}
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


def make(dst, config, seed, std, norm_mean, tokenizer_from, drop=(), extra=None,
         config_extra=None):
    """A random model built by mlx-lm's own class for `config["model_type"]`: every parameter
    N(0, std) (norm weights N(norm_mean, 0.1)), saved by mlx-lm's save utilities, so the tensor
    names, shapes and config are what mlx-lm itself writes. `drop`: parameters left out (a
    tied lm_head); `extra`: more tensors (a vision tower mlx-lm ignores); `config_extra`: keys
    added to config.json after saving (a vision_config)."""
    import shutil
    from pathlib import Path

    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import _get_classes, save_config, save_model

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.random.seed(seed)
    params = []
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("norm.weight"):
            v = norm_mean + 0.1 * mx.random.normal(p.shape)
        else:
            v = std * mx.random.normal(p.shape)
        params.append((name, v.astype(mx.float32)))
    model.update(tree_unflatten(params))
    out = Path(dst)
    save_model(out, model)
    if extra or drop:
        shard = out / "model.safetensors"
        weights = dict(mx.load(str(shard)))
        index = json.load(open(out / "model.safetensors.index.json"))
        for name in drop:
            del weights[name]
            del index["weight_map"][name]
        for name, shape in (extra or {}).items():
            weights[name] = std * mx.random.normal(shape)
            index["weight_map"][name] = "model.safetensors"
        mx.save_safetensors(str(shard), weights, metadata={"format": "mlx"})
        index["metadata"]["total_size"] = sum(v.nbytes for v in weights.values())
        json.dump(index, open(out / "model.safetensors.index.json", "w"), indent=4)
    cfg = dict(config)
    cfg.update(config_extra or {})
    save_config(cfg, out / "config.json")
    if config_extra:
        # save_config drops a vision_config; a real checkpoint has one.
        json.dump(dict(sorted(cfg.items())), open(out / "config.json", "w"), indent=4)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json"]:
        shutil.copy(Path(tokenizer_from) / f, out / f)
    return {"ok": True}


def generate(model_dir, prompt_ids, steps, upcast=False, f32_embedding=False):
    model, _ = load(model_dir)
    if upcast:
        # Every float parameter (and so every activation) in float32: the reference for an
        # engine that widens half weights and computes in f32.
        model.set_dtype(mx.float32)
    import mlx.nn as nn

    embedding_call = nn.QuantizedEmbedding.__call__
    if f32_embedding:
        # mx.dequantize returns bfloat16 for the microscaling modes, so a quantized embedding
        # feeds the first layer bf16 values; cast to f32 it is the f32 reference.
        nn.QuantizedEmbedding.__call__ = lambda self, x: embedding_call(self, x).astype(
            mx.float32
        )
    try:
        return greedy(model, prompt_ids, steps)
    finally:
        nn.QuantizedEmbedding.__call__ = embedding_call


def greedy(model, prompt_ids, steps):
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
            if "make" in job:
                results.append(make(**job["make"]))
            elif "convert" in job:
                c = job["convert"]
                with contextlib.redirect_stdout(io.StringIO()):
                    convert(hf_path=c["src"], mlx_path=c["dst"], **c["args"])
                results.append({"ok": True})
            elif "generate" in job:
                g = job["generate"]
                results.append(
                    generate(
                        g["model"],
                        g["prompt_ids"],
                        g["steps"],
                        g.get("upcast", False),
                        g.get("f32_embedding", False),
                    )
                )
            else:
                t = job["template"]
                results.append(template(t["model"], t["messages"]))
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    print(json.dumps(results))


main()

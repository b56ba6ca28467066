"""Load a model directory with mlx_lm and print the greedy token ids of a short generation."""
import json
import sys

import mlx.core as mx

mx.set_default_device(mx.cpu)
from mlx_lm import load
from mlx_lm.generate import generate_step

model_dir, n = sys.argv[1], int(sys.argv[2])
model, tokenizer = load(model_dir)
prompt = mx.array(tokenizer.encode("The sky is"))
ids = []
for token, _ in generate_step(prompt, model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1)):
    ids.append(int(token))
print(json.dumps(ids))

"""Derive model.safetensors.index.json for a model directory with Python's `safetensors`
package, independently of mlxk: weight_map from every shard's keys, total_size from dtype and
shape, total_parameters as mlx-lm's get_total_parameters counts them. Prints it exactly as
mlx-lm's save_model writes it (json.dump, indent=4, weight_map sorted)."""
import glob
import json
import math
import os
import sys

from safetensors import safe_open

DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
}

model_dir = sys.argv[1]
config = json.load(open(os.path.join(model_dir, "config.json")))
quant = config.get("quantization") or config.get("quantization_config") or {}

tensors = {}
weight_map = {}
for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
    name = os.path.basename(path)
    with safe_open(path, framework="numpy") as f:
        for key in f.keys():
            s = f.get_slice(key)
            if key in weight_map:
                sys.exit(f"{key} in {weight_map[key]} and {name}")
            weight_map[key] = name
            tensors[key] = (s.get_dtype(), s.get_shape())

total_size = sum(math.prod(shape) * DTYPE_BITS[dtype] // 8 for dtype, shape in tensors.values())


def params(key, shape):
    module, _, leaf = key.rpartition(".")
    if module + ".scales" not in tensors:
        return math.prod(shape)
    if leaf != "weight":
        return 0
    layer = quant.get(module)
    bits = layer["bits"] if isinstance(layer, dict) else quant["bits"]
    return math.prod(shape) * 32 // bits


total_parameters = sum(params(k, shape) for k, (_, shape) in tensors.items())
index = {
    "metadata": {"total_size": total_size, "total_parameters": total_parameters},
    "weight_map": {k: weight_map[k] for k in sorted(weight_map)},
}
sys.stdout.write(json.dumps(index, indent=4))

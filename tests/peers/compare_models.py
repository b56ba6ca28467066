"""Compares two MLX model directories tensor by tensor (name, dtype, shape, bytes) and their
config quantization blocks. Prints a JSON report; exits 0 either way (the Rust test asserts).

usage: compare_models.py OURS THEIRS
"""
import glob
import json
import os
import struct
import sys


def tensors(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "model*.safetensors"))):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                f.seek(base + begin)
                out[name] = (info["dtype"], info["shape"], f.read(end - begin))
    return out


def config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def compare(ours_dir, theirs_dir):
    ours, theirs = tensors(ours_dir), tensors(theirs_dir)
    mismatches = []
    for name in sorted(set(ours) | set(theirs)):
        if name not in ours:
            mismatches.append({"tensor": name, "problem": "missing in ours"})
        elif name not in theirs:
            mismatches.append({"tensor": name, "problem": "extra in ours"})
        else:
            (d1, s1, b1), (d2, s2, b2) = ours[name], theirs[name]
            if d1 != d2 or s1 != s2:
                mismatches.append(
                    {"tensor": name, "problem": f"ours {d1} {s1}, theirs {d2} {s2}"}
                )
            elif b1 != b2:
                diff = sum(1 for x, y in zip(b1, b2) if x != y)
                mismatches.append(
                    {"tensor": name, "problem": f"{diff} of {len(b1)} bytes differ"}
                )
    c1, c2 = config(ours_dir), config(theirs_dir)
    blocks = {}
    for key in ("quantization", "quantization_config"):
        blocks[key] = c1.get(key) == c2.get(key)
        if not blocks[key]:
            mismatches.append(
                {"config": key, "ours": c1.get(key), "theirs": c2.get(key)}
            )
    return {"tensors": len(theirs), "mismatches": mismatches, "config_blocks_equal": blocks}


if __name__ == "__main__":
    print(json.dumps(compare(sys.argv[1], sys.argv[2])))

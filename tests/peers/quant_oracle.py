"""mx.quantize / mx.dequantize on the CPU for every tensor of a safetensors file: affine with
every bits in {1,2,3,4,5,6,8} and group size in {32,64,128}, and the mxfp4 / mxfp8 / nvfp4
modes; results saved as safetensors."""
import sys

import mlx.core as mx

mx.set_default_device(mx.cpu)
src, dst = sys.argv[1], sys.argv[2]
out = {}
for name, x in mx.load(src).items():
    for bits in (1, 2, 3, 4, 5, 6, 8):
        for group in (32, 64, 128):
            w, s, b = mx.quantize(x, group_size=group, bits=bits)
            key = f"{name}.b{bits}.g{group}"
            out[key + ".weight"] = w
            out[key + ".scales"] = s
            out[key + ".biases"] = b
            out[key + ".deq"] = mx.dequantize(w, s, b, group_size=group, bits=bits)
    for mode, group, bits in (("mxfp4", 32, 4), ("mxfp8", 32, 8), ("nvfp4", 16, 4)):
        w, s = mx.quantize(x, group_size=group, bits=bits, mode=mode)
        key = f"{name}.{mode}"
        out[key + ".weight"] = w
        out[key + ".scales"] = s
mx.save_safetensors(dst, out)

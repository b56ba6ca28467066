"""A benchmark's generated model (HF / mlx-lm layout, f32 / bf16 / f16 safetensors, byte-level
tokenizer) as an F16 GGUF for llama.cpp, written with llama.cpp's own gguf-py (llama.cpp's
convert_hf_to_gguf.py needs torch, which the peer venv does not carry). What
convert_hf_to_gguf.py does for each family, and nothing else:
- llama: its tensor names and the q/k row permutation (HF's rotary halves to GGML's pairs);
- gemma3_text: gguf-py's tensor names for GEMMA3, 1 added to every norm weight (Gemma3RMSNorm
  multiplies by 1 + w), head_dim as key/value length, sliding window and the local RoPE base;
- qwen3_moe: gguf-py's names for QWEN3MOE, experts as one stacked tensor per projection (mlx-lm
  stores them stacked already, as `switch_mlp`), expert counts and sizes.
`llama-quantize` then makes the Q4_0 file.

usage: hf_to_gguf.py GGUF_PY_DIR MODEL_DIR OUT.gguf
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np


def read_safetensors(path):
    """name -> float32 array (bf16, f16 and f32 tensors)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        buf = raw[base + lo : base + hi]
        shape = info["shape"]
        if info["dtype"] == "BF16":
            a = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            a = a.view(np.float32)
        elif info["dtype"] == "F16":
            a = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
        elif info["dtype"] == "F32":
            a = np.frombuffer(buf, dtype=np.float32)
        else:
            raise SystemExit(f"{name}: dtype {info['dtype']} not handled")
        out[name] = a.reshape(shape)
    return out


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotary halves to GGML's pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tokenizer_kv(w, gguf, tok, cfg, vocab):
    """The byte-level BPE vocabulary (no merges: one token per byte), its specials, and unused
    entries up to the embedding's rows."""
    names = [None] * vocab
    types = [gguf.TokenType.UNUSED] * vocab
    for s, i in tok["model"]["vocab"].items():
        names[i], types[i] = s, gguf.TokenType.NORMAL
    for t in tok["added_tokens"]:
        names[t["id"]], types[t["id"]] = t["content"], gguf.TokenType.CONTROL
    names = [n if n is not None else f"[PAD{i}]" for i, n in enumerate(names)]
    # llama.cpp refuses a BPE vocabulary without merges: one that never applies to text
    # (two NUL bytes), into a spare entry unless the vocabulary has that token.
    if "\u0100\u0100" not in names:
        spare = next(i for i, t in enumerate(types) if t == gguf.TokenType.UNUSED)
        names[spare], types[spare] = "\u0100\u0100", gguf.TokenType.NORMAL
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges(["\u0100 \u0100"])
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))
    w.add_add_bos_token(True)


def main():
    sys.path.insert(0, sys.argv[1])
    import gguf

    model, out = Path(sys.argv[2]), sys.argv[3]
    cfg = json.loads((model / "config.json").read_text())
    tok = json.loads((model / "tokenizer.json").read_text())
    tensors = {}
    for f in sorted(model.glob("model*.safetensors")):
        tensors.update(read_safetensors(f))
    kind = cfg["model_type"]
    arch = {
        "llama": gguf.MODEL_ARCH.LLAMA,
        "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
        "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
    }.get(kind)
    if arch is None:
        raise SystemExit(f"{model}: model_type {kind} is not handled (llama, gemma3_text, qwen3_moe)")
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden, vocab, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim", hidden // heads)

    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if kind == "llama":
        w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if kind == "gemma3_text":
        # mlx-lm's defaults where the config is silent (gemma3_text.ModelArgs).
        w.add_rope_freq_base(cfg.get("rope_theta", 1_000_000.0))
        w.add_rope_freq_base_swa(cfg.get("rope_local_base_freq", 10_000.0))
        w.add_sliding_window(cfg["sliding_window"])
        w.add_sliding_window_pattern(cfg.get("sliding_window_pattern", 6))
    if kind == "qwen3_moe":
        w.add_rope_freq_base(cfg.get("rope_theta", 1_000_000.0))
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    tokenizer_kv(w, gguf, tok, cfg, vocab)

    def put(name, a, f32=False):
        w.add_tensor(name, a.astype(np.float32 if f32 else np.float16))

    if kind == "llama":
        put("token_embd.weight", tensors["model.embed_tokens.weight"])
        put("output_norm.weight", tensors["model.norm.weight"], f32=True)
        put(
            "output.weight",
            tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"]),
        )
        for l in range(layers):
            p = f"model.layers.{l}"
            put(f"blk.{l}.attn_norm.weight", tensors[f"{p}.input_layernorm.weight"], f32=True)
            put(f"blk.{l}.attn_q.weight", permute(tensors[f"{p}.self_attn.q_proj.weight"], heads, heads))
            put(f"blk.{l}.attn_k.weight", permute(tensors[f"{p}.self_attn.k_proj.weight"], heads, kv_heads))
            put(f"blk.{l}.attn_v.weight", tensors[f"{p}.self_attn.v_proj.weight"])
            put(f"blk.{l}.attn_output.weight", tensors[f"{p}.self_attn.o_proj.weight"])
            put(f"blk.{l}.ffn_norm.weight", tensors[f"{p}.post_attention_layernorm.weight"], f32=True)
            put(f"blk.{l}.ffn_gate.weight", tensors[f"{p}.mlp.gate_proj.weight"])
            put(f"blk.{l}.ffn_up.weight", tensors[f"{p}.mlp.up_proj.weight"])
            put(f"blk.{l}.ffn_down.weight", tensors[f"{p}.mlp.down_proj.weight"])
    else:
        names = gguf.get_tensor_name_map(arch, layers)
        for name, a in sorted(tensors.items()):
            # mlx-lm's stacked experts are convert_hf_to_gguf.py's merged `experts` tensors.
            hf = name.replace(".mlp.switch_mlp.", ".mlp.experts.")
            target = names.get_name(hf, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise SystemExit(f"{name}: no GGUF name for it in {kind}")
            norm = name.endswith("norm.weight")
            if kind == "gemma3_text" and norm:
                a = a + 1.0
            # Norms, and the router (small, kept exact as convert does), in f32.
            put(target, a, f32=norm or target.endswith("ffn_gate_inp.weight"))
        if "lm_head.weight" not in tensors:
            put("output.weight", tensors["model.embed_tokens.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()

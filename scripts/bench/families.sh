#!/usr/bin/env bash
# Decode speed of `mlxk run` (release) on the families and formats of issue 18, as a fraction
# of the memory-bandwidth bound (weight bytes read per token — for routed experts only the
# chosen experts' rows, attention and the shared parts — over this machine's read bandwidth,
# examples/bandwidth.rs, measured right before each run). Models are generated with mlx-lm's
# own classes (random weights, tests/peers/lm_oracle.py's `make`, the fixture's byte-level
# tokenizer with a 32000-row vocabulary) and quantized by `python -m mlx_lm convert`:
#   gemma3_text  0.52B (hidden 1152, 18 layers, 4 heads of 256, 1 kv head, sliding 512 / 6), 4-bit
#   qwen3_moe    1.7B total / 0.3B active (hidden 1024, 16 layers, 16 experts of 2048, top-2), 4-bit
#   llama dense  1.6B (hidden 2048, 32 layers, intermediate 5504): the MoE's dense equal, 4-bit
#   llama 0.43B  (the run benchmark's), mxfp4, beside its affine 4-bit
# A 64-token prompt, 128 greedy tokens, both cores; median of RUNS after one warm-up.
# Side by side, in the same run: llama.cpp (scripts/bench/llama_cpp.sh; ~30 minutes to build the
# first time) on the same gemma3_text, qwen3_moe and dense models, converted to F16 GGUF
# (scripts/bench/hf_to_gguf.py) and quantized to Q4_0 (4.5 bits per weight, as MLX's 4-bit
# with groups of 64), decoding 128 tokens with llama-bench, 2 threads (from an empty context:
# this llama-bench crashes with `-d 64` on these models; 64 tokens of context change little)
# (MLXK_BENCH_LLAMA_CPP=0 leaves it out).
#
#   scripts/bench/families.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk --example fixture_cache --example bandwidth
mlxk=$PWD/target/release/mlxk
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-families.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs"

# The byte-level tokenizer the generated models share.
target/release/examples/fixture_cache llama "$work/hub" 1024 24 4096 32000 1 bf16 >/dev/null
llama=$(echo "$work"/hub/models--bench--llama/snapshots/*)

make() { # name config-json
  "$py" - "$work" "$1" "$2" "$llama" <<'PY'
import json, subprocess, sys
work, name, config, tok = sys.argv[1:5]
jobs = [{"make": {"dst": f"{work}/{name}", "config": json.loads(config), "seed": 7,
                  "std": 0.02, "norm_mean": 1.0, "tokenizer_from": tok}}]
open(f"{work}/{name}.jobs.json", "w").write(json.dumps(jobs))
out = subprocess.run([sys.executable, "tests/peers/lm_oracle.py", f"{work}/{name}.jobs.json"],
                     check=True, capture_output=True, text=True).stdout
assert "error" not in json.loads(out)[0], out
PY
}
quantize() { # src dst args...
  local src=$1 dst=$2
  shift 2
  "$py" -m mlx_lm convert --hf-path "$src" --mlx-path "$dst" -q "$@" >/dev/null 2>&1
}
common='"rms_norm_eps": 1e-6, "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": false'
make gemma3 "{\"model_type\": \"gemma3_text\", \"hidden_size\": 1152, \"num_hidden_layers\": 18,
  \"intermediate_size\": 6912, \"num_attention_heads\": 4, \"num_key_value_heads\": 1,
  \"head_dim\": 256, \"query_pre_attn_scalar\": 256, \"sliding_window\": 512,
  \"sliding_window_pattern\": 6, $common}"
make moe "{\"model_type\": \"qwen3_moe\", \"hidden_size\": 1024, \"num_hidden_layers\": 16,
  \"intermediate_size\": 2048, \"num_attention_heads\": 16, \"num_key_value_heads\": 4,
  \"head_dim\": 64, \"num_experts\": 16, \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 1,
  \"mlp_only_layers\": [], \"moe_intermediate_size\": 2048, \"norm_topk_prob\": true,
  \"rope_theta\": 1000000.0, $common}"
make dense "{\"model_type\": \"llama\", \"hidden_size\": 2048, \"num_hidden_layers\": 32,
  \"intermediate_size\": 5504, \"num_attention_heads\": 16, \"num_key_value_heads\": 4,
  \"rope_theta\": 10000.0, $common}"
with_llama_cpp=${MLXK_BENCH_LLAMA_CPP:-1}
if [ "$with_llama_cpp" = 1 ]; then
  llama_bin=$(scripts/bench/llama_cpp.sh)
  gguf_py=$(scripts/bench/llama_cpp.sh --gguf-py)
  for m in gemma3 moe dense; do
    "$py" scripts/bench/hf_to_gguf.py "$gguf_py" "$work/$m" "$work/$m-f16.gguf"
    "$llama_bin/llama-quantize" "$work/$m-f16.gguf" "$work/$m-q4_0.gguf" Q4_0 >/dev/null 2>&1
    rm "$work/$m-f16.gguf"
  done
fi
quantize "$work/gemma3" "$work/gemma3-q4" --q-bits 4 --q-group-size 64
quantize "$work/moe" "$work/moe-q4" --q-bits 4 --q-group-size 64
quantize "$work/dense" "$work/dense-q4" --q-bits 4 --q-group-size 64
quantize "$llama" "$work/llama-q4" --q-bits 4 --q-group-size 64
quantize "$llama" "$work/llama-mxfp4" --q-mode mxfp4
rm -rf "$work/gemma3" "$work/moe" "$work/dense"
prompt=$(printf 'The quick brown fox jumps over the lazy dog, again and again ...')

bench() { # name dir
  local name=$1 dir=$2
  "$mlxk" run "$dir" "$prompt" --max-tokens 16 --temperature 0 --no-chat-template >/dev/null 2>&1
  : >"$work/rows"
  for _ in $(seq 1 "$runs"); do
    bw=$(target/release/examples/bandwidth 2048 5 | sed -E 's/read bandwidth: ([0-9.]+) GB\/s.*/\1/')
    "$mlxk" --json run "$dir" "$prompt" --max-tokens 128 --temperature 0 --repetition-penalty 1 \
      --no-chat-template --verbose >"$work/out.json" 2>"$work/err"
    d=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["timing"]["decode_tps"])' "$work/out.json")
    per_token=$(sed -nE 's/.*, ([0-9]+) bytes read per token.*/\1/p' "$work/err")
    echo "$d $bw $per_token" >>"$work/rows"
  done
  "$py" - "$work/rows" "$name" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
med = statistics.median
per_token = rows[0][2]
frac = [d / (bw * 1e9 / per_token) for d, bw, _ in rows]
print(f"{sys.argv[2]:22} decode {med(r[0] for r in rows):6.1f} tok/s median ({min(r[0] for r in rows):.1f}-{max(r[0] for r in rows):.1f})"
      f" | {per_token / 1e6:6.1f} MB/token | {med(frac):.2f} of the bound ({min(frac):.2f}-{max(frac):.2f};"
      f" bandwidth {min(r[1] for r in rows):.1f}-{max(r[1] for r in rows):.1f} GB/s)")
PY
}
bench "gemma3_text 0.52B 4-bit" "$work/gemma3-q4"
bench "qwen3_moe 1.7B/0.3B 4-bit" "$work/moe-q4"
bench "llama 1.6B dense 4-bit" "$work/dense-q4"
bench "llama 0.43B 4-bit" "$work/llama-q4"
bench "llama 0.43B mxfp4" "$work/llama-mxfp4"

bench_llama_cpp() { # name gguf
  "$llama_bin/llama-bench" -m "$2" -t "$(nproc)" -p 0 -n 128 -r "$runs" -o json \
    >"$work/llama.json" 2>/dev/null
  "$py" - "$work/llama.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(f"{sys.argv[2]:22} decode {r['avg_ts']:6.1f} tok/s mean of {len(r['samples_ts'])}"
      f" ({min(r['samples_ts']):.1f}-{max(r['samples_ts']):.1f}) | {r['model_size'] / 1e6:6.1f} MB file")
PY
}
if [ "$with_llama_cpp" = 1 ]; then
  echo "llama.cpp $(cd "$(dirname "$gguf_py")" && git describe --tags 2>/dev/null || echo "(llama-cpp-python 0.3.36's)"), Q4_0:"
  bench_llama_cpp "gemma3_text 0.52B Q4_0" "$work/gemma3-q4_0.gguf"
  bench_llama_cpp "qwen3_moe 1.7B/0.3B Q4_0" "$work/moe-q4_0.gguf"
  bench_llama_cpp "llama 1.6B dense Q4_0" "$work/dense-q4_0.gguf"
fi

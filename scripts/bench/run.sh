#!/usr/bin/env bash
# Benchmark of `mlxk run` (release) on a generated Llama of 0.43B parameters (hidden 1024, 24
# layers, intermediate 4096, 16 heads, 4 kv heads, vocab 32000): its bf16 original and a 4-bit
# group-64 version made by `python -m mlx_lm convert` (the venv of scripts/peers.sh). A 64-token
# prompt, 128 greedy tokens (repetition penalty off), both cores. Reports prompt and decode
# tok/s (best of RUNS), peak RSS (/usr/bin/time, highest of RUNS), and decode as a fraction of
# the memory-bandwidth bound: weight bytes read per token over this machine's read bandwidth
# (examples/bandwidth.rs).
#
#   scripts/bench/run.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk --example fixture_cache --example bandwidth
mlxk=$PWD/target/release/mlxk
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs"
bw_line=$(target/release/examples/bandwidth 2048 5)
echo "$bw_line"
bw=$(echo "$bw_line" | sed -E 's/read bandwidth: ([0-9.]+) GB\/s.*/\1/')
target/release/examples/fixture_cache llama "$work/hub" 1024 24 4096 32000 1 bf16 >/dev/null
bf16=$(echo "$work"/hub/models--bench--llama/snapshots/*)
"$py" -m mlx_lm convert --hf-path "$bf16" --mlx-path "$work/q4" -q --q-bits 4 --q-group-size 64 >/dev/null 2>&1
# The fixture tokenizer is byte-level: 63 characters and BOS are 64 tokens.
prompt=$(printf 'The quick brown fox jumps over the lazy dog, again and again ...')

bench() { # name dir
  local name=$1 dir=$2 best_p=0 best_d=0 rss=0 per_token=0 tokens=0 ptoks=0
  for _ in $(seq 1 "$runs"); do
    /usr/bin/time -f "%M" -o "$work/rss" "$mlxk" --json run "$dir" "$prompt" --max-tokens 128 \
      --temperature 0 --repetition-penalty 1 --no-chat-template --verbose >"$work/out.json" 2>"$work/err"
    read -r p d tokens ptoks < <("$py" -c 'import json,sys; d=json.load(open(sys.argv[1]))["data"]; print(d["timing"]["prompt_tps"], d["timing"]["decode_tps"], d["usage"]["completion_tokens"], d["usage"]["prompt_tokens"])' "$work/out.json")
    best_p=$(awk -v a="$best_p" -v b="$p" 'BEGIN { print (b > a) ? b : a }')
    best_d=$(awk -v a="$best_d" -v b="$d" 'BEGIN { print (b > a) ? b : a }')
    r=$(tail -1 "$work/rss")
    [ "$r" -gt "$rss" ] && rss=$r
    per_token=$(sed -nE 's/.*, ([0-9]+) bytes read per token.*/\1/p' "$work/err")
  done
  awk -v n="$name" -v p="$best_p" -v d="$best_d" -v rss="$rss" -v w="$per_token" -v bw="$bw" -v t="$tokens" -v pt="$ptoks" 'BEGIN {
    bound = bw * 1e9 / w
    printf "%-5s prompt %d tokens: %.1f tok/s | decode %d tokens: %.1f tok/s = %.2f of the bound (%.1f tok/s: %.1f MB/token at %.1f GB/s) | peak RSS %.0f MB\n",
      n, pt, p, t, d, d / bound, bound, w / 1e6, bw, rss / 1024 }'
}
bench 4-bit "$work/q4"
bench bf16 "$bf16"
echo "weights on disk: 4-bit $(du -shL "$work/q4/model.safetensors" | cut -f1), bf16 $(du -shL "$bf16/model.safetensors" | cut -f1)"

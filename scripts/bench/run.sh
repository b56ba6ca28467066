#!/usr/bin/env bash
# Benchmark of `mlxk run` (release) on a generated Llama of 0.43B parameters (hidden 1024, 24
# layers, intermediate 4096, 16 heads, 4 kv heads, vocab 32000): its bf16 original and 4-bit and
# 8-bit group-64 versions made by `python -m mlx_lm convert` (the venv of scripts/peers.sh). A 64-token
# prompt, 128 greedy tokens (repetition penalty off), both cores. Reports prompt and decode
# tok/s (median and best of RUNS), peak RSS (/usr/bin/time, highest of RUNS), and decode as a
# fraction of the memory-bandwidth bound: weight bytes read per token over this machine's read
# bandwidth (examples/bandwidth.rs). This VM's bandwidth swings between runs (42-63 GB/s seen
# within minutes), so it is measured again right before every run and each run's fraction is
# taken against its own measurement; the median fraction is the headline, printed beside the median
# decode over the median bandwidth (steadier when the probe and the decode see different minutes).
# One unrecorded warm-up run per model first.
#
# With BASE (another build of `mlxk`, e.g. the commit before a change), every run also runs BASE
# right after this tree's binary, under the same bandwidth reading, and both are reported: an
# interleaved A/B that the VM's bandwidth swings cannot bias.
#
#   scripts/bench/run.sh [RUNS] [BASE]   (default 5 runs, no BASE)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
base=${2:-}
cargo build --release --quiet --bin mlxk --example fixture_cache --example bandwidth
mlxk=$PWD/target/release/mlxk
bins=("head:$mlxk")
[ -n "$base" ] && bins+=("base:$(realpath "$base")")
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs"
target/release/examples/fixture_cache llama "$work/hub" 1024 24 4096 32000 1 bf16 >/dev/null
bf16=$(echo "$work"/hub/models--bench--llama/snapshots/*)
"$py" -m mlx_lm convert --hf-path "$bf16" --mlx-path "$work/q4" -q --q-bits 4 --q-group-size 64 >/dev/null 2>&1
"$py" -m mlx_lm convert --hf-path "$bf16" --mlx-path "$work/q8" -q --q-bits 8 --q-group-size 64 >/dev/null 2>&1
# The fixture tokenizer is byte-level: 63 characters and BOS are 64 tokens.
prompt=$(printf 'The quick brown fox jumps over the lazy dog, again and again ...')

bandwidth() { # GB/s, 2 threads, best of 5 passes over 2 GiB
  target/release/examples/bandwidth 2048 5 | sed -E 's/read bandwidth: ([0-9.]+) GB\/s.*/\1/'
}

bench() { # name dir
  local name=$1 dir=$2 bw label bin
  declare -A rss=()
  for entry in "${bins[@]}"; do
    label=${entry%%:*} bin=${entry#*:}
    : >"$work/rows.$label"
    rss[$label]=0
    # Warm-up, not recorded: the weights into the page cache (this VM reclaims cold page cache
    # proactively, so a first run can include reading them from disk).
    "$bin" run "$dir" "$prompt" --max-tokens 16 --temperature 0 --no-chat-template >/dev/null 2>&1
  done
  local order
  for i in $(seq 1 "$runs"); do
    bw=$(bandwidth)
    # With BASE, the two binaries take turns going first (the first run after the probe is
    # not the second's equal).
    order=("${bins[@]}")
    if [ $((i % 2)) = 0 ] && [ ${#bins[@]} -gt 1 ]; then order=("${bins[1]}" "${bins[0]}"); fi
    for entry in "${order[@]}"; do
      label=${entry%%:*} bin=${entry#*:}
      /usr/bin/time -f "%M" -o "$work/rss" "$bin" --json run "$dir" "$prompt" --max-tokens 128 \
        --temperature 0 --repetition-penalty 1 --no-chat-template --verbose >"$work/out.json" 2>"$work/err"
      read -r p d tokens ptoks < <("$py" -c 'import json,sys; d=json.load(open(sys.argv[1]))["data"]; print(d["timing"]["prompt_tps"], d["timing"]["decode_tps"], d["usage"]["completion_tokens"], d["usage"]["prompt_tokens"])' "$work/out.json")
      per_token=$(sed -nE 's/.*, ([0-9]+) bytes read per token.*/\1/p' "$work/err")
      echo "$p $d $bw $per_token $tokens $ptoks" >>"$work/rows.$label"
      r=$(tail -1 "$work/rss")
      [ "$r" -gt "${rss[$label]}" ] && rss[$label]=$r
    done
  done
  for entry in "${bins[@]}"; do
    label=${entry%%:*}
    summary "$work/rows.$label" "$name$([ ${#bins[@]} -gt 1 ] && echo " $label")" "${rss[$label]}"
  done
}

summary() { # rows name rss_kb
  "$py" - "$@" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
name, rss = sys.argv[2], int(sys.argv[3])
per_token, tokens, ptoks = rows[0][3], int(rows[0][4]), int(rows[0][5])
frac = [d / (bw * 1e9 / per_token) for _, d, bw, *_ in rows]
med = statistics.median
print(f"{name:5} prompt {ptoks} tokens: {med(r[0] for r in rows):.1f} tok/s median, {max(r[0] for r in rows):.1f} best"
      f" | decode {tokens} tokens: {med(r[1] for r in rows):.1f} tok/s median, {max(r[1] for r in rows):.1f} best"
      f" | {med(frac):.2f} of the bound median ({min(frac):.2f}-{max(frac):.2f};"
      f" median decode at the median bandwidth {med(r[1] for r in rows) / (med(r[2] for r in rows) * 1e9 / per_token):.2f};"
      f" {per_token / 1e6:.1f} MB/token, bandwidth {min(r[2] for r in rows):.1f}-{max(r[2] for r in rows):.1f} GB/s)"
      f" | peak RSS {rss / 1024:.0f} MB")
for p, d, bw, *_ in rows:
    print(f"      run: prompt {p:.1f} tok/s, decode {d:.1f} tok/s, bandwidth {bw:.1f} GB/s -> {d / (bw * 1e9 / per_token):.2f} of the bound")
PY
}
bench 4-bit "$work/q4"
bench 8-bit "$work/q8"
bench bf16 "$bf16"
echo "weights on disk: 4-bit $(du -shL "$work/q4/model.safetensors" | cut -f1), 8-bit $(du -shL "$work/q8/model.safetensors" | cut -f1), bf16 $(du -shL "$bf16/model.safetensors" | cut -f1)"

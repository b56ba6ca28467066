#!/usr/bin/env bash
# Benchmark of `mlxk convert --quantize` against `python -m mlx_lm convert -q` (mlx-lm 0.32.2,
# mlx 0.32.4 CPU, the venv of scripts/peers.sh) on the same machine in the same run:
# a generated bf16 Llama (hidden 1024, 24 layers, intermediate 4096, 16 heads, 4 kv heads, vocab
# 32000: 0.43B parameters, 834 MB) -> 4 bits, group 64. Wall time (best of RUNS) and peak RSS
# (the highest of RUNS) from /usr/bin/time, runs interleaved; then both outputs are compared
# tensor by tensor (they must be identical). The source is read once beforehand so both read it from the
# page cache.
#
#   scripts/bench/convert.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk --example fixture_cache
mlxk=$PWD/target/release/mlxk
fixture=$PWD/target/release/examples/fixture_cache
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs (best of)"
"$fixture" llama "$work/hub" 1024 24 4096 32000 1 bf16 >/dev/null
src=$(echo "$work"/hub/models--bench--llama/snapshots/*)
cat "$src"/* >/dev/null
echo "source: $(du -shL "$src/model.safetensors" | cut -f1) bf16, $(ls "$src" | wc -l) files"

measure() { # name cmd... -> appends "wall_s rss_kb" to $work/name.txt
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || {
    cat "$work/err" >&2
    exit 1
  }
  cat "$work/t" >>"$work/$name.txt"
}

for i in $(seq 1 "$runs"); do
  rm -rf "$work/ours" "$work/theirs"
  measure mlxk "$mlxk" convert "$src" "$work/ours" --quantize 4 --q-group-size 64
  measure mlx_lm "$py" -m mlx_lm convert --hf-path "$src" --mlx-path "$work/theirs" -q --q-bits 4 --q-group-size 64
done

report() { # name -> "best wall s, worst peak RSS MB"
  local wall rss
  wall=$(cut -d' ' -f1 "$work/$1.txt" | sort -n | head -1)
  rss=$(cut -d' ' -f2 "$work/$1.txt" | sort -n | tail -1)
  echo "$wall $((rss / 1024))"
}
read -r ours_s ours_mb <<<"$(report mlxk)"
read -r theirs_s theirs_mb <<<"$(report mlx_lm)"
echo "mlxk convert --quantize 4:   ${ours_s} s, peak RSS ${ours_mb} MB   (all runs: $(cut -d' ' -f1 "$work/mlxk.txt" | tr '\n' ' '))"
echo "mlx_lm convert -q --q-bits 4: ${theirs_s} s, peak RSS ${theirs_mb} MB   (all runs: $(cut -d' ' -f1 "$work/mlx_lm.txt" | tr '\n' ' '))"
awk -v a="$ours_s" -v b="$theirs_s" -v c="$ours_mb" -v d="$theirs_mb" \
  'BEGIN { printf "speed-up %.1fx, RSS %.2f of mlx-lm\n", b / a, c / d }'
"$py" tests/peers/compare_models.py "$work/ours" "$work/theirs" >"$work/cmp.json"
"$py" - "$work/cmp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
equal = all(r["config_blocks_equal"].values())
print(f"tensors compared: {r['tensors']}, mismatches: {len(r['mismatches'])}, config blocks equal: {equal}")
sys.exit(1 if r["mismatches"] or not equal else 0)
PY

#!/usr/bin/env bash
# Benchmark of the model store through the CLI (release build): `list` and `health` over a
# cache of 200 tiny models, and `health` / `convert --repair-index` on a 64-shard model whose
# shards hold 1 GiB of (sparse) data each. Reports wall time (median of N runs) and bytes read:
# the tool's own accounting (`bytes_read` in --json) and, independently, the sum of the bytes
# returned by read(2)/pread64(2) on model files as strace sees them.
#
#   scripts/bench/store.sh [RUNS]      (default 5)
#   MLX_KNIFE=/path/to/mlx-knife/bin/mlxk scripts/bench/store.sh   also times mlx-knife's list/health
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}

cargo build --release --quiet --bin mlxk --example fixture_cache
mlxk=$PWD/target/release/mlxk
work=$(mktemp -d -t mlxk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

target/release/examples/fixture_cache many "$work/h200/hub" 200
target/release/examples/fixture_cache sparse "$work/hub64" 64 $((1 << 30))

median_ms() { # command...: median wall time in ms over $runs runs (after one warm-up run)
  "$@" >/dev/null 2>&1 || true
  local times=()
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

strace_bytes() { # bytes returned by read/pread64 on files under the cache, per strace
  if ! command -v strace >/dev/null; then echo "n/a"; return; fi
  # One trace file per thread (-ff): no syscall is split into unfinished/resumed halves.
  rm -f "$work"/trace.*
  strace -ff -qq -e trace=openat,read,pread64 -e signal=none -o "$work/trace" "$@" >/dev/null 2>&1 || true
  python3 - "$work" <<'PY'
import glob, re, sys
total = 0
for path in glob.glob(sys.argv[1] + "/trace.*"):
    fds = {}
    for line in open(path):
        m = re.match(r'openat\(.*?"([^"]+)".*= (\d+)$', line)
        if m:
            fds[m.group(2)] = m.group(1).startswith(sys.argv[1])
            continue
        m = re.match(r'p?read(?:64)?\((\d+),.*= (\d+)$', line)
        if m and fds.get(m.group(1)):
            total += int(m.group(2))
print(total)
PY
}

json_bytes() { "$@" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["summary"]["bytes_read"])'; }

echo "mlxk-fs $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, runs=$runs"
echo "| workload | median wall | bytes read (mlxk) | bytes read (strace) | data on disk |"
echo "|---|---|---|---|---|"
size200=$(du -sb --apparent-size "$work/h200/hub" | cut -f1)
printf '| list --all, 200 models | %s ms | - | %s | %s B |\n' \
  "$(median_ms "$mlxk" --cache "$work/h200/hub" list --all)" \
  "$(strace_bytes "$mlxk" --cache "$work/h200/hub" list --all)" "$size200"
printf '| health, 200 models | %s ms | %s | %s | %s B |\n' \
  "$(median_ms "$mlxk" --cache "$work/h200/hub" health)" \
  "$(json_bytes "$mlxk" --cache "$work/h200/hub" --json health)" \
  "$(strace_bytes "$mlxk" --cache "$work/h200/hub" health)" "$size200"
if [ -n "${MLX_KNIFE:-}" ]; then
  printf '| mlx-knife list, 200 models | %s ms | - | %s | %s B |\n' \
    "$(median_ms env HF_HOME="$work/h200" "$MLX_KNIFE" list)" \
    "$(strace_bytes env HF_HOME="$work/h200" "$MLX_KNIFE" list)" "$size200"
  printf '| mlx-knife health, 200 models | %s ms | - | %s | %s B |\n' \
    "$(median_ms env HF_HOME="$work/h200" "$MLX_KNIFE" health)" \
    "$(strace_bytes env HF_HOME="$work/h200" "$MLX_KNIFE" health)" "$size200"
fi
size64=$(du -sb --apparent-size "$work/hub64" | cut -f1)
printf '| health, 64 shards x 1 GiB (sparse) | %s ms | %s | %s | %s B |\n' \
  "$(median_ms "$mlxk" --cache "$work/hub64" health bench/sparse-sharded)" \
  "$(json_bytes "$mlxk" --cache "$work/hub64" --json health bench/sparse-sharded)" \
  "$(strace_bytes "$mlxk" --cache "$work/hub64" health bench/sparse-sharded)" "$size64"

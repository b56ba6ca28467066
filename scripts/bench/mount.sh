#!/usr/bin/env bash
# Benchmarks of the mount (release build, root for passthrough and drop_caches):
#  1. sequential read of a 2 GiB shard, warm and cold page cache: directly from the cache,
#     through the mount with passthrough, and with --no-passthrough (MB/s, ratio to direct);
#  2. mlx_lm.load + eval of every weight, from the mount vs from the snapshot directory;
#  3. mount start-up and `ls -lR` over a cache of 1,000 models (no header is read).
#
#   scripts/bench/mount.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk-fs --example fixture_cache
fs=$PWD/target/release/mlxk-fs
fixture=$PWD/target/release/examples/fixture_cache
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-bench.XXXXXX)
export MLXK_FS_STATE_DIR=$work/state
cleanup() {
  for m in "$work"/mnt*; do "$fs" umount "$m" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
read_mbps() { # file [times]: MB/s of `times` back-to-back sequential reads (dd, 1 MiB blocks)
  local t0 t1 bytes n=${2:-1}
  bytes=$(stat -L -c %s "$1")
  t0=$(date +%s%N)
  for _ in $(seq "$n"); do dd if="$1" of=/dev/null bs=1M status=none; done
  t1=$(date +%s%N)
  echo $(( bytes * n * 1000 / (t1 - t0) ))
}
best() { sort -n | tail -1; }

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs (best of, rounds interleaved)"

# 1. a ~2.1 GiB single-shard f16 Llama (hidden 2048, 22 layers) of random weights
mkdir -p "$work/hub"
"$fixture" llama "$work/hub" 2048 22 5632 32000 1
shard=$(ls "$work"/hub/models--bench--llama/snapshots/*/model.safetensors)
size=$(stat -L -c %s "$shard")
mkdir -p "$work/mnt-pt" "$work/mnt-nopt"
"$fs" mount "$work/mnt-pt" --cache "$work/hub" --overlay "$work/ov-pt" >/dev/null
"$fs" mount "$work/mnt-nopt" --cache "$work/hub" --overlay "$work/ov-nopt" --no-passthrough >/dev/null
via_pt=$work/mnt-pt/bench/llama/model.safetensors
via_nopt=$work/mnt-nopt/bench/llama/model.safetensors
echo
echo "### Sequential read, $(( size / 1048576 )) MiB shard, dd bs=1M"
echo "| path | warm MB/s | ratio | cold MB/s | ratio |"
echo "|---|---|---|---|---|"
# Rounds interleave the three paths so that drift of this shared machine hits them alike.
declare -A warm cold
for f in "$shard" "$via_pt" "$via_nopt"; do cat "$f" >/dev/null; done
for _ in $(seq "$runs"); do
  for path in direct passthrough fallback; do
    case $path in direct) f=$shard ;; passthrough) f=$via_pt ;; fallback) f=$via_nopt ;; esac
    w=$(read_mbps "$f" 4); [ "$w" -gt "${warm[$path]:-0}" ] && warm[$path]=$w
  done
done
for _ in $(seq "$runs"); do
  for path in direct passthrough fallback; do
    case $path in direct) f=$shard ;; passthrough) f=$via_pt ;; fallback) f=$via_nopt ;; esac
    drop; c=$(read_mbps "$f"); [ "$c" -gt "${cold[$path]:-0}" ] && cold[$path]=$c
  done
done
for path in direct passthrough fallback; do
  printf '| %s | %s | %s | %s | %s |\n' "$path" "${warm[$path]}" "$(awk "BEGIN{printf \"%.2f\", ${warm[$path]}/${warm[direct]}}")" \
    "${cold[$path]}" "$(awk "BEGIN{printf \"%.2f\", ${cold[$path]}/${cold[direct]}}")"
done

echo
echo "### mlx_lm.load + mx.eval(parameters), same model, warm page cache"
cat > "$work/load.py" <<'PY'
import sys, time
import mlx.core as mx
mx.set_default_device(mx.cpu)
from mlx_lm import load
t = time.perf_counter()
model, _ = load(sys.argv[1])
mx.eval(model.parameters())
print(f"{time.perf_counter() - t:.3f}")
PY
snapdir=$(dirname "$shard")
# One discarded run of each first, so both read from a warm page cache.
"$py" "$work/load.py" "$snapdir" >/dev/null
"$py" "$work/load.py" "$work/mnt-pt/bench/llama" >/dev/null
snap_all=(); mnt_all=()
for _ in $(seq "$runs"); do
  snap_all+=("$("$py" "$work/load.py" "$snapdir")")
  mnt_all+=("$("$py" "$work/load.py" "$work/mnt-pt/bench/llama")")
done
snap_s=$(printf '%s\n' "${snap_all[@]}" | sort -n | head -1)
mnt_s=$(printf '%s\n' "${mnt_all[@]}" | sort -n | head -1)
echo "| source | seconds (best) |"
echo "|---|---|"
echo "| snapshot directory | $snap_s |"
echo "| mount (passthrough) | $mnt_s |"
echo "| ratio mount / snapshot | $(awk "BEGIN{printf \"%.3f\", $mnt_s/$snap_s}") |"
"$fs" umount "$work/mnt-pt" >/dev/null
"$fs" umount "$work/mnt-nopt" >/dev/null

echo
echo "### 1,000 models: mount start-up and ls -lR"
"$fixture" many "$work/hub1000" 1000
mkdir -p "$work/mnt-many"
t0=$(date +%s%N); "$fs" mount "$work/mnt-many" --cache "$work/hub1000" --overlay "$work/ov-many" >/dev/null; t1=$(date +%s%N)
startup=$(( (t1 - t0) / 1000000 ))
t0=$(date +%s%N); entries=$(ls -lR "$work/mnt-many" | wc -l); t1=$(date +%s%N)
lslr=$(( (t1 - t0) / 1000000 ))
t0=$(date +%s%N); ls -lR "$work/mnt-many" >/dev/null; t1=$(date +%s%N)
lslr_warm=$(( (t1 - t0) / 1000000 ))
headers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["header_bytes_read"])' "$work/mnt-many/.mlxk-fs-status")
echo "| step | ms |"
echo "|---|---|"
echo "| mlxk-fs mount (returns when ready) | $startup |"
echo "| ls -lR, first ($entries lines) | $lslr |"
echo "| ls -lR, again | $lslr_warm |"
echo "| header bytes read by the daemon meanwhile | $headers |"

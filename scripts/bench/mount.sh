#!/usr/bin/env bash
# Benchmarks of the mount (release build, root for passthrough and drop_caches), every row both
# with passthrough and on the daemon path (--no-passthrough: what every non-root and every macOS
# user gets):
#  1. sequential read of a 2 GiB shard, warm and cold page cache: directly from the cache,
#     through the mount with passthrough, and with --no-passthrough (MB/s, ratio to direct);
#  2. mx.load + eval of a 256 MiB safetensors file, warm, and mlx_lm.load + eval of the 2 GiB
#     model: from the snapshot directory vs through both mounts;
#  3. N models (default 10,000; MANY_MODELS=N): mount until serving, `ls -lR` of the whole mount,
#     then unmount, mount again (the view cache kept) and `ls -lR` again; header bytes read
#     again, daemon RSS; beside it, the same `ls -lR` of a FUSE file system that does no work
#     (examples/fuse_floor.rs: the tree's shape in memory, the daemon's session settings — the
#     cost of the requests alone) and of fuse-overlayfs over the same tree as plain files.
#
#   scripts/bench/mount.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk-fs --example fixture_cache --example fuse_floor
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
echo "### mx.load + eval, warm page cache (seconds, best of $runs)"
cat > "$work/load.py" <<'PY'
import sys, time
import mlx.core as mx
mx.set_default_device(mx.cpu)
path = sys.argv[2]
t = time.perf_counter()
if sys.argv[1] == "mx":
    weights = mx.load(path)
    mx.eval(list(weights.values()))
else:
    from mlx_lm import load
    model, _ = load(path)
    mx.eval(model.parameters())
print(f"{time.perf_counter() - t:.3f}")
PY
# A ~256 MiB single-shard model for mx.load (hidden 1024, 5 layers), in a cache of its own.
"$fixture" llama "$work/hub-small" 1024 5 2816 32000 1 >/dev/null
small=$(ls "$work"/hub-small/models--bench--llama/snapshots/*/model.safetensors)
mkdir -p "$work/mnt-small-pt" "$work/mnt-small-nopt"
"$fs" mount "$work/mnt-small-pt" --cache "$work/hub-small" --overlay "$work/ov-small-pt" >/dev/null
"$fs" mount "$work/mnt-small-nopt" --cache "$work/hub-small" --overlay "$work/ov-small-nopt" --no-passthrough >/dev/null
snapdir=$(dirname "$shard")
load_best() { # mx|lm path -> best seconds of $runs (after one discarded run: warm page cache)
  "$py" "$work/load.py" "$1" "$2" >/dev/null
  for _ in $(seq "$runs"); do "$py" "$work/load.py" "$1" "$2"; done | sort -n | head -1
}
echo "| what | snapshot | passthrough | ratio | --no-passthrough | ratio |"
echo "|---|---|---|---|---|---|"
row() { # label kind snapshot-path pt-path nopt-path
  local s p n
  s=$(load_best "$2" "$3"); p=$(load_best "$2" "$4"); n=$(load_best "$2" "$5")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$s" "$p" "$(awk "BEGIN{printf \"%.3f\", $p/$s}")" \
    "$n" "$(awk "BEGIN{printf \"%.3f\", $n/$s}")"
}
row "mx.load, $(( $(stat -L -c %s "$small") / 1048576 )) MiB safetensors" mx "$small" \
  "$work/mnt-small-pt/bench/llama/model.safetensors" "$work/mnt-small-nopt/bench/llama/model.safetensors"
row "mlx_lm.load, $(( size / 1048576 )) MiB model" lm "$snapdir" "$work/mnt-pt/bench/llama" "$work/mnt-nopt/bench/llama"
for m in mnt-pt mnt-nopt mnt-small-pt mnt-small-nopt; do "$fs" umount "$work/$m" >/dev/null; done

n_models=${MANY_MODELS:-10000}
echo
echo "### $n_models models (1 small shard each), --no-passthrough: mount and ls -lR, then again after a remount"
"$fixture" many "$work/hub-many" "$n_models" >/dev/null
mkdir -p "$work/mnt-many"
echo "| round | mount until serving, ms | ls -lR, s (entries) | daemon CPU, s | header bytes read | views from the view cache | daemon RSS, MB |"
echo "|---|---|---|---|---|---|---|"
for round in first "after a remount"; do
  t0=$(date +%s%N)
  "$fs" mount "$work/mnt-many" --cache "$work/hub-many" --overlay "$work/ov-many" --no-passthrough >/dev/null
  t1=$(date +%s%N)
  status=$work/mnt-many/.mlxk-fs-status
  pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$status")
  c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  t2=$(date +%s%N); entries=$(ls -lR "$work/mnt-many" | wc -l); t3=$(date +%s%N)
  c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  rss=$(( $(ps -o rss= -p "$pid") / 1024 ))
  read -r headers from_cache < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["header_bytes_read"], s["views_from_cache"])' "$status")
  printf '| %s | %d | %s (%d) | %s | %d | %d | %d |\n' "$round" $(( (t1 - t0) / 1000000 )) \
    "$(awk "BEGIN{printf \"%.2f\", $(( t3 - t2 ))/1e9}")" "$entries" \
    "$(awk "BEGIN{printf \"%.2f\", $(( c1 - c0 ))/100}")" "$headers" "$from_cache" "$rss"
  "$fs" umount "$work/mnt-many" >/dev/null
done
# The same listing elsewhere: the floor of the requests, and a peer union file system, both
# over a tree of the mount's shape: every model with the nine names of bench-model-0001 (two
# shards; the fixture's models have one to four, 9.5 names on average).
listing() { # dir: seconds of `ls -lR dir`, and its entries
  local t0 t1 entries
  t0=$(date +%s%N); entries=$(ls -lR "$1" | wc -l); t1=$(date +%s%N)
  printf '%s (%d)' "$(awk "BEGIN{printf \"%.2f\", $(( t1 - t0 ))/1e9}")" "$entries"
}
"$fs" mount "$work/mnt-many" --cache "$work/hub-many" --overlay "$work/ov-many" --no-passthrough >/dev/null
mapfile -t names < <(ls -A "$work/mnt-many/mlx-community/bench-model-0001")
"$fs" umount "$work/mnt-many" >/dev/null
mkdir -p "$work/mnt-floor"
"$(dirname "$fixture")/fuse_floor" "$work/mnt-floor" "$n_models" "${names[@]}" &
floor_pid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt-floor" && break; sleep 0.1; done
printf '| fuse_floor: the requests alone, no work | | %s | | | | |\n' "$(listing "$work/mnt-floor")"
umount "$work/mnt-floor"; wait "$floor_pid" || true
command -v fuse-overlayfs >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null 2>&1 || true
if command -v fuse-overlayfs >/dev/null 2>&1; then
  for i in $(seq 0 $(( n_models - 1 ))); do
    d=$work/plain-many/mlx-community/$(printf 'bench-model-%04d' "$i")
    mkdir -p "$d" && (cd "$d" && touch "${names[@]}")
  done
  mkdir -p "$work/mnt-fo-many"
  fuse-overlayfs -o "lowerdir=$work/plain-many" "$work/mnt-fo-many" 2>/dev/null
  printf '| fuse-overlayfs %s, the same tree as plain files | | %s | | | | |\n' \
    "$(dpkg-query -W -f '${Version}' fuse-overlayfs 2>/dev/null || true)" "$(listing "$work/mnt-fo-many")"
  umount "$work/mnt-fo-many"
fi

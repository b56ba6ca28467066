#!/usr/bin/env bash
# Benchmarks of the writable overlay (release build; root for passthrough, drop_caches and the
# XFS loop image):
#  1. sequential write of a new 2 GiB file (dd bs=1M, conv=fsync) through the mount, with
#     passthrough and with --no-passthrough, vs directly into the overlay directory;
#  2. copy-up of a 2 GiB cache shard (the first write-intent open): a copy on ext4, a reflink on
#     an XFS (reflink=1) loop image holding both cache and overlay;
#  3. untar of a 10,000-file tree (1-8 KiB files, 700 directories) into a new workspace through
#     the mount (with and without passthrough) vs into a plain directory and into fuse-overlayfs
#     (installed from the distribution if missing), each followed by syncfs.
#
#   scripts/bench/overlay.sh [RUNS]   (default 3; best of)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk-fs --example fixture_cache
fs=$PWD/target/release/mlxk-fs
fixture=$PWD/target/release/examples/fixture_cache
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-bench.XXXXXX)
export MLXK_FS_STATE_DIR=$work/state
cleanup() {
  fusermount3 -u "$work/mnt-fo" 2>/dev/null || umount "$work/mnt-fo" 2>/dev/null || true
  for m in "$work"/mnt* "$work"/xfs/mnt; do "$fs" umount "$m" >/dev/null 2>&1 || true; done
  umount "$work/xfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }
best() { sort -n | head -1; }

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs (best of)"

mkdir -p "$work/hub" "$work/mnt-pt" "$work/mnt-nopt" "$work/plain"
"$fixture" llama "$work/hub" 2048 22 5632 32000 1 >/dev/null
"$fs" mount "$work/mnt-pt" --cache "$work/hub" --overlay "$work/ov-pt" >/dev/null
"$fs" mount "$work/mnt-nopt" --cache "$work/hub" --overlay "$work/ov-nopt" --no-passthrough >/dev/null

# 1. sequential write of a new file
write_ms() { # path -> ms for 2 GiB written and fsynced
  local t0 t1
  rm -f "$1"
  t0=$(now)
  dd if=/dev/zero of="$1" bs=1M count=2048 conv=fsync status=none
  t1=$(now)
  rm -f "$1"
  ms "$t0" "$t1"
}
mkdir -p "$work/mnt-pt/bench/new" "$work/mnt-nopt/bench/new" "$work/ov-pt/direct"
declare -A w
for _ in $(seq "$runs"); do
  for p in direct passthrough fallback; do
    case $p in
      direct) f=$work/ov-pt/direct/file ;;
      passthrough) f=$work/mnt-pt/bench/new/file ;;
      fallback) f=$work/mnt-nopt/bench/new/file ;;
    esac
    t=$(write_ms "$f")
    if [ -z "${w[$p]:-}" ] || [ "$t" -lt "${w[$p]}" ]; then w[$p]=$t; fi
  done
done
echo
echo "### Sequential write of a new 2 GiB file (dd bs=1M conv=fsync)"
echo "| path | ms | MB/s | ratio to direct |"
echo "|---|---|---|---|"
for p in direct passthrough fallback; do
  printf '| %s | %d | %d | %s |\n' "$p" "${w[$p]}" $(( 2048 * 1048576 / 1000 / ${w[$p]} )) \
    "$(awk -v a="${w[direct]}" -v b="${w[$p]}" 'BEGIN{printf "%.2f", a/b}')"
done

# 2. copy-up of a 2 GiB shard: open(O_RDWR) of the cache file, closed at once.
copyup_ms() { # mountpoint overlay -> ms of the first write-intent open
  local f=$1/bench/llama/model.safetensors t0 t1
  t0=$(now)
  python3 -c "import os,sys; os.close(os.open(sys.argv[1], os.O_RDWR))" "$f"
  t1=$(now)
  ms "$t0" "$t1"
}
reset_copy() { # mountpoint overlay
  "$fs" overlay reset "$1/bench/llama" >/dev/null
}
echo
echo "### Copy-up of a 2 GiB shard (first O_RDWR open)"
echo "| filesystem | method | ms |"
echo "|---|---|---|"
best_copy=""
for _ in $(seq "$runs"); do
  sync
  t=$(copyup_ms "$work/mnt-pt")
  reset_copy "$work/mnt-pt"
  if [ -z "$best_copy" ] || [ "$t" -lt "$best_copy" ]; then best_copy=$t; fi
done
echo "| ext4 | copy (in-kernel copy_file_range, 64 MiB steps) | $best_copy |"
if command -v mkfs.xfs >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs >/dev/null 2>&1; then
  truncate -s 8G "$work/xfs.img"
  mkfs.xfs -q -m reflink=1 "$work/xfs.img"
  mkdir -p "$work/xfs"
  mount -o loop "$work/xfs.img" "$work/xfs"
  cp -a "$work/hub" "$work/xfs/hub"
  mkdir -p "$work/xfs/mnt"
  "$fs" mount "$work/xfs/mnt" --cache "$work/xfs/hub" --overlay "$work/xfs/overlay" >/dev/null
  best_reflink=""
  for _ in $(seq "$runs"); do
    t=$(copyup_ms "$work/xfs/mnt")
    reset_copy "$work/xfs/mnt"
    if [ -z "$best_reflink" ] || [ "$t" -lt "$best_reflink" ]; then best_reflink=$t; fi
  done
  echo "| xfs (reflink=1) | reflink (FICLONE) | $best_reflink |"
  "$fs" umount "$work/xfs/mnt" >/dev/null
  umount "$work/xfs"
else
  echo "| xfs | reflink | (xfsprogs unavailable) |"
fi

# 3. untar of a 10,000-file tree
mkdir -p "$work/tree/src"
python3 - "$work/tree/src" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(1)
for i in range(10000):
    d = os.path.join(root, f"d{i % 100:02d}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
        f.write(os.urandom(rng.randint(1024, 8192)))
PY
tar -C "$work/tree" -cf "$work/tree.tar" src
command -v fuse-overlayfs >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null 2>&1 || true
fo=""
if command -v fuse-overlayfs >/dev/null 2>&1; then
  mkdir -p "$work/fo-lower" "$work/fo-upper" "$work/fo-work" "$work/mnt-fo"
  fuse-overlayfs -o "lowerdir=$work/fo-lower,upperdir=$work/fo-upper,workdir=$work/fo-work" "$work/mnt-fo" 2>/dev/null
  fo="fuse-overlayfs $(dpkg-query -W -f '${Version}' fuse-overlayfs 2>/dev/null || true)"
fi
untar_ms() { # dir -> ms
  local t0 t1
  rm -rf "$1"; mkdir -p "$1"
  # What the last round deleted is on disk before the clock starts.
  sync
  t0=$(now)
  tar -C "$1" -xf "$work/tree.tar"
  sync -f "$1"
  t1=$(now)
  ms "$t0" "$t1"
}
declare -A u
for _ in $(seq "$runs"); do
  for p in plain passthrough fallback ${fo:+fuse-overlayfs}; do
    case $p in
      plain) d=$work/plain/untar ;;
      passthrough) d=$work/mnt-pt/myorg/untar ;;
      fallback) d=$work/mnt-nopt/myorg/untar ;;
      fuse-overlayfs) d=$work/mnt-fo/untar ;;
    esac
    t=$(untar_ms "$d")
    if [ -z "${u[$p]:-}" ] || [ "$t" -lt "${u[$p]}" ]; then u[$p]=$t; fi
  done
done
echo
echo "### Untar of 10,000 files (1-8 KiB, 700 directories) into a new workspace, then syncfs"
echo "| target | ms | files/s | ratio to plain | speed vs fuse-overlayfs |"
echo "|---|---|---|---|---|"
for p in plain passthrough fallback ${fo:+fuse-overlayfs}; do
  vs_fo="-"
  [ -n "$fo" ] && vs_fo="$(awk -v a="${u[fuse-overlayfs]}" -v b="${u[$p]}" 'BEGIN{printf "%.2fx", a/b}')"
  printf '| %s | %d | %d | %s | %s |\n' "$p" "${u[$p]}" $(( 10000 * 1000 / ${u[$p]} )) \
    "$(awk -v a="${u[plain]}" -v b="${u[$p]}" 'BEGIN{printf "%.2f", a/b}')" "$vs_fo"
done
[ -n "$fo" ] && echo "($fo, upper and work directories on the same filesystem as the overlay)"
true

#!/usr/bin/env bash
# Benchmark of `mlxk pull` against huggingface_hub's snapshot_download (HF_HUB_DISABLE_XET=1,
# the peer venv of scripts/peers.sh) and curl (4 transfers at once, as mlxk's 4 workers, and
# one file after the other), all
# from the same stand-in hub on 127.0.0.1 (tests/peers/stand_in_hub.py) in the same run, into an
# empty cache each time: a 2 GiB model (4 LFS shards of 512 MiB and a config). Wall time best of
# RUNS, peak RSS the highest (/usr/bin/time); the runs are interleaved. mlxk fsyncs each blob
# before renaming it into place (a crash never leaves a complete-looking partial file); the
# other two do not, so the time includes mlxk's writeback and not theirs.
#
#   scripts/bench/pull.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --quiet --bin mlxk
mlxk=$PWD/target/release/mlxk
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-pull-bench.XXXXXX)
hub_pid=
cleanup() { [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

sha=dddddddddddddddddddddddddddddddddddddddd
model="$work/root/bench/big/commits/$sha"
mkdir -p "$model" "$work/root/bench/big/refs"
printf %s "$sha" >"$work/root/bench/big/refs/main"
for i in 1 2 3 4; do
  head -c $((512 << 20)) /dev/urandom >"$model/model-0000$i-of-00004.safetensors"
done
echo '{"model_type": "llama"}' >"$model/config.json"
"$py" tests/peers/stand_in_hub.py "$work/root" --lifetime 3600 >"$work/port" &
hub_pid=$!
while [ ! -s "$work/port" ]; do sleep 0.1; done
port=$(awk '{print $2}' "$work/port")
endpoint="http://127.0.0.1:$port"
# The hub hashes the files once (its etags); do that before timing anything.
curl -s "$endpoint/api/models/bench/big/tree/main?recursive=true" >/dev/null
echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, runs=$runs (best of); model: $(du -sh "$model" | cut -f1)"

measure() { # name cmd... -> appends "wall_s rss_kb" to $work/name.txt
  local name=$1
  shift
  # The hub serves from the page cache (its files read beforehand); what was written by the
  # run before is on disk first, so that no run pays for another's writeback.
  cat "$model"/* >/dev/null
  sync
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || {
    cat "$work/err" >&2
    exit 1
  }
  cat "$work/t" >>"$work/$name.txt"
}

curl_one_by_one() {
  local dir=$1
  mkdir -p "$dir"
  for f in "$model"/*; do
    curl -sfL -o "$dir/$(basename "$f")" "$endpoint/bench/big/resolve/main/$(basename "$f")"
  done
}

curl_all() {
  local dir=$1 args=()
  mkdir -p "$dir"
  for f in "$model"/*; do
    args+=(-o "$dir/$(basename "$f")" "$endpoint/bench/big/resolve/main/$(basename "$f")")
  done
  curl -sfL --parallel --parallel-max 4 "${args[@]}"
}

for i in $(seq 1 "$runs"); do
  rm -rf "$work/c-mlxk" "$work/c-hf" "$work/c-curl"
  measure mlxk env HF_ENDPOINT="$endpoint" "$mlxk" --cache "$work/c-mlxk" pull bench/big
  measure huggingface_hub env HF_ENDPOINT="$endpoint" HF_HUB_DISABLE_XET=1 HF_HUB_CACHE="$work/c-hf" \
    HF_HUB_DISABLE_PROGRESS_BARS=1 "$py" -c "from huggingface_hub import snapshot_download; snapshot_download('bench/big')"
  measure curl bash -c "$(declare -f curl_all); model='$model' endpoint='$endpoint' curl_all '$work/c-curl'"
  rm -rf "$work/c-curl1"
  measure curl_sequential bash -c "$(declare -f curl_one_by_one); model='$model' endpoint='$endpoint' curl_one_by_one '$work/c-curl1'"
done
cmp "$work/c-mlxk/models--bench--big/snapshots/$sha/model-00003-of-00004.safetensors" "$model/model-00003-of-00004.safetensors"

report() { # name -> "best wall s, worst peak RSS MB"
  local wall rss
  wall=$(cut -d' ' -f1 "$work/$1.txt" | sort -n | head -1)
  rss=$(cut -d' ' -f2 "$work/$1.txt" | sort -n | tail -1)
  echo "$wall $((rss / 1024))"
}
bytes=$(du -sb "$model" | cut -f1)
for name in mlxk huggingface_hub curl curl_sequential; do
  read -r s mb <<<"$(report $name)"
  awk -v n="$name" -v s="$s" -v mb="$mb" -v b="$bytes" -v all="$(cut -d' ' -f1 "$work/$name.txt" | tr '\n' ' ')" \
    'BEGIN { printf "%-16s %6.2f s  %7.0f MB/s  peak RSS %4d MB   (all runs: %s)\n", n, s, b / s / 1e6, mb, all }'
done
read -r m _ <<<"$(report mlxk)"
read -r h _ <<<"$(report huggingface_hub)"
read -r c _ <<<"$(report curl)"
read -r c1 _ <<<"$(report curl_sequential)"
awk -v m="$m" -v h="$h" -v c="$c" -v c1="$c1" \
  'BEGIN { printf "mlxk throughput: %.2fx huggingface_hub, %.2fx curl (4 at once), %.2fx curl (one by one)\n", h / m, c / m, c1 / m }'

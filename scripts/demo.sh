#!/usr/bin/env bash
# The main job on a demo cache this script builds itself: a healthy model and one with the
# mlx-vlm #624 broken index, checked, repaired into a managed workspace, checked again; a model
# quantized (and an already quantized one refused); then the
# cache mounted with mlxk-fs, serving the repaired index; an edit, a delete, a repair-index and a
# quantize convert landing in the overlay (shown with `mlxk-fs overlay diff/ls`), still there after a
# remount; and the cache proven unchanged.
#
#   scripts/demo.sh [DIR]     (default: a fresh temporary directory, kept for you to explore)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin mlxk --bin mlxk-fs --example fixture_cache
mlxk=$PWD/target/debug/mlxk
mlxkfs=$PWD/target/debug/mlxk-fs
demo=${1:-$(mktemp -d -t mlxk-demo.XXXXXX)}
cache=$demo/hub
"$mlxkfs" umount "$demo/mnt" >/dev/null 2>&1 || true
rm -rf "$cache" "$demo/Qwen2.5-VL-tiny-4bit-fixed" "$demo/overlay"
target/debug/examples/fixture_cache demo "$cache"
export HF_HUB_CACHE=$cache

fingerprint() { (cd "$cache" && find . -printf '%p %y %m %T@ %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || true; }

before=$(fingerprint)
echo "Demo cache: $cache (fingerprint $before)"

run "$mlxk" list
run "$mlxk" health mlx-community/Llama-tiny-4bit
run "$mlxk" health mlx-community/Qwen2.5-VL-tiny-4bit
run "$mlxk" convert mlx-community/Qwen2.5-VL-tiny-4bit "$demo/Qwen2.5-VL-tiny-4bit-fixed" --repair-index
run "$mlxk" health "$demo/Qwen2.5-VL-tiny-4bit-fixed"
run "$mlxk" show "$demo/Qwen2.5-VL-tiny-4bit-fixed"
run "$mlxk" convert mlx-community/Llama-tiny-f16 "$cache/models--x" --repair-index
run "$mlxk" convert meta-test/Llama-tiny "$demo/Llama-tiny-4bit" --quantize 4 --q-group-size 32
run "$mlxk" show "$demo/Llama-tiny-4bit"
run "$mlxk" convert mlx-community/Llama-tiny-4bit "$demo/Llama-tiny-4bit-again" --quantize 4
run "$mlxk" run meta-test/Llama-tiny "Why is the sky blue?" --max-tokens 16 --seed 1 --verbose
run "$mlxk" --json run "$demo/Llama-tiny-4bit" "Why is the sky blue?" --max-tokens 8 --temperature 0

if [ -e /dev/fuse ]; then
  mkdir -p "$demo/mnt"
  export MLXK_FS_STATE_DIR=$demo/state
  run "$mlxkfs" mount "$demo/mnt" --overlay "$demo/overlay"
  run ls "$demo/mnt" "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit"
  run "$mlxk" health "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit"
  printf '\nThe mount serves the same repaired index convert wrote: '
  cmp "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit/model.safetensors.index.json" \
      "$demo/Qwen2.5-VL-tiny-4bit-fixed/model.safetensors.index.json" && echo identical
  run head -c 400 "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit/.mlxk_workspace.json"
  echo
  ws=$demo/mnt/mlx-community/Llama-tiny-f16
  printf '\nWrites land in the overlay (%s), never in the cache:\n' "$demo/overlay"
  run sh -c "sed -i 's/\"max_position_embeddings\": *[0-9]*/\"max_position_embeddings\": 4096/' '$ws/config.json'"
  run rm "$ws/README.md"
  run "$mlxk" convert "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit" "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit-fixed" --repair-index
  run "$mlxk" convert "$demo/mnt/meta-test/Llama-tiny" "$demo/mnt/meta-test/Llama-tiny-mxfp4" --quantize --q-mode mxfp4
  run "$mlxkfs" overlay diff "$ws"
  run "$mlxkfs" overlay ls --overlay "$demo/overlay"
  run ls -la "$demo/overlay/mlx-community/Llama-tiny-f16"
  run "$mlxkfs" status
  run "$mlxkfs" umount "$demo/mnt"
  run "$mlxkfs" mount "$demo/mnt" --overlay "$demo/overlay"
  printf '\nAfter a remount: README.md is %s, config.json says %s, the converted workspace is %s\n' \
    "$([ -e "$ws/README.md" ] && echo present || echo gone)" \
    "$(grep -o '"max_position_embeddings": *[0-9]*' "$ws/config.json")" \
    "$("$mlxk" health "$demo/mnt/mlx-community/Qwen2.5-VL-tiny-4bit-fixed" --fail-on-unhealthy >/dev/null && echo healthy || echo unhealthy)"
  run "$mlxkfs" umount "$demo/mnt"
else
  echo "(no /dev/fuse here: skipping the mount part of the demo)"
fi

after=$(fingerprint)
printf '\nCache fingerprint before %s, after %s: ' "$before" "$after"
if [ "$before" = "$after" ]; then echo "unchanged."; else echo "CHANGED"; exit 1; fi
echo "Explore it: HF_HUB_CACHE=$cache $mlxk list --all --health"

#!/usr/bin/env bash
# The main job on a demo cache this script builds itself: a healthy model and one with the
# mlx-vlm #624 broken index, checked, repaired into a managed workspace, checked again, and the
# cache proven unchanged.
#
#   scripts/demo.sh [DIR]     (default: a fresh temporary directory, kept for you to explore)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin mlxk --example fixture_cache
mlxk=$PWD/target/debug/mlxk
demo=${1:-$(mktemp -d -t mlxk-demo.XXXXXX)}
cache=$demo/hub
rm -rf "$cache" "$demo/Qwen2.5-VL-tiny-4bit-fixed"
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

after=$(fingerprint)
printf '\nCache fingerprint before %s, after %s: ' "$before" "$after"
if [ "$before" = "$after" ]; then echo "unchanged."; else echo "CHANGED"; exit 1; fi
echo "Explore it: HF_HUB_CACHE=$cache $mlxk list --all --health"

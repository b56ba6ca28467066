#!/usr/bin/env bash
# The long runs of the randomized operation model: 100,000 random operations on the mount
# (tests/exerciser.rs) and 1,000,000 on the namespace without FUSE (tests/namespace_model.rs),
# each against a plain reference directory. After every step: the same result
# (success or errno) on both, the directories the step touched equal, the content of what it
# wrote equal; every TREE_EVERY steps (default 100) the whole trees, with every file's content;
# at the end the cache's fingerprint and the held read-only handles. Seeded; the seed is printed
# and named in any failure. (scripts/test.sh runs 2,000 through the mount with whole trees at
# every step, and 20,000 on the namespace with whole trees every 10.)
#
#   scripts/stress.sh [OPS] [SEED] [TREE_EVERY]     (default 100000 through the mount and ten
#                                                    times that on the namespace, a seed from
#                                                    the clock, 100)
set -euo pipefail
cd "$(dirname "$0")/.."
ops=${1:-100000}
seed=${2:-$(date +%s%N)}
export MLXK_EXERCISER_OPS=$ops MLXK_EXERCISER_SEED=$seed MLXK_EXERCISER_TREE_EVERY=${3:-100}
export MLXK_MODEL_OPS=$((ops * 10)) MLXK_MODEL_SEED=$seed MLXK_MODEL_TREE_EVERY=${3:-100}
echo "exerciser: $ops operations through the mount, $MLXK_MODEL_OPS on the namespace, seed $seed, whole trees every ${3:-100} steps (release build)"
start=$(date +%s)
cargo test --release --quiet --test exerciser --test namespace_model -- --nocapture 2>&1 | grep -v '^$'
echo "passed in $(( $(date +%s) - start )) s"

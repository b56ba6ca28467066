#!/usr/bin/env bash
# The long run of the randomized operation exerciser (tests/exerciser.rs): 100,000 random
# operations on the mount and on a plain reference directory, compared after every step, the
# cache's fingerprint checked at the end. Seeded; the seed is printed and named in any failure.
#
#   scripts/stress.sh [OPS] [SEED]     (default 100000, a seed from the clock)
set -euo pipefail
cd "$(dirname "$0")/.."
ops=${1:-100000}
seed=${2:-$(date +%s%N)}
export MLXK_EXERCISER_OPS=$ops MLXK_EXERCISER_SEED=$seed
echo "exerciser: $ops operations, seed $seed (release build)"
start=$(date +%s)
cargo test --release --quiet --test exerciser -- --nocapture 2>&1 | grep -v '^$'
echo "passed in $(( $(date +%s) - start )) s"

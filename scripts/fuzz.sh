#!/usr/bin/env bash
# The mutation fuzzer (examples/fuzz.rs) over the parsers of what users and downloads put on
# disk: the safetensors header reader, the index, the workspace sentinel, config.json.
# EXECUTIONS mutated inputs (default 1,000,000) from valid seeds; a panic is a crash (saved and
# reported, exit 1). Inputs that showed a new behaviour are kept in target/fuzz/corpus; with
# --update-corpus they replace tests/fuzz-corpus, which tests/fuzz_corpus.rs replays in every
# test run.
#
#   scripts/fuzz.sh [EXECUTIONS] [SEED] [--update-corpus]
set -euo pipefail
cd "$(dirname "$0")/.."
executions=${1:-1000000}
seed=${2:-$(date +%s)}
cargo build --release --quiet --example fuzz
rm -rf target/fuzz
start=$(date +%s)
target/release/examples/fuzz "$executions" "$seed" target/fuzz
echo "in $(( $(date +%s) - start )) s"
if [ "${3:-}" = --update-corpus ]; then
  rm -rf tests/fuzz-corpus
  cp -r target/fuzz/corpus tests/fuzz-corpus
  echo "tests/fuzz-corpus: $(find tests/fuzz-corpus -type f | wc -l) inputs"
fi

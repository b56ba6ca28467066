#!/usr/bin/env bash
# The project's test command (README, .ci/run): provisions what the tests need, idempotently,
# then runs formatting and lint checks and every test.
#
# Environment:
#   MLXK_REQUIRE_PEERS=1  a missing Python peer (mlx, mlx-lm, safetensors) fails instead of skipping
#   MLXK_REQUIRE_FUSE=1   a missing FUSE capability fails instead of skipping
#   MLXK_PEER_VENV=DIR    where the peer venv lives (default: ~/.cache/mlxk-fs/peers-<pins hash>)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python peers (scripts/peers.sh)"
if py=$(scripts/peers.sh); then
  export MLXK_PEER_PYTHON="$py"
  echo "peer python: $MLXK_PEER_PYTHON"
else
  echo "!!!!!!!! SKIP: the Python peer venv could not be provisioned; peer tests will skip !!!!!!!!"
  if [ "${MLXK_REQUIRE_PEERS:-0}" = 1 ]; then
    echo "MLXK_REQUIRE_PEERS=1: failing" >&2
    exit 1
  fi
fi

step "FUSE: /dev/fuse and fuse3 (fusermount3)"
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null \
      || echo "warning: could not install fuse3; mounts as root still work without it"
  else
    echo "warning: fusermount3 missing (Debian: apt install fuse3); unprivileged mounts will fail"
  fi
fi
command -v fusermount3 >/dev/null 2>&1 && fusermount3 -V
# curl: tests/hub.rs drives the stand-in hub's control endpoint with it (and the pull benchmark
# compares against it).
if ! command -v curl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null \
    || echo "warning: could not install curl; the hub tests will fail"
fi
# rsync: tests/overlay.rs runs it (with git, cp and tar) in workspaces of the mount.
if ! command -v rsync >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null \
    || echo "warning: could not install rsync; that part of the tools test will skip"
fi
if [ ! -e /dev/fuse ]; then
  echo "!!!!!!!! SKIP: /dev/fuse is missing; mount tests will skip !!!!!!!!"
  if [ "${MLXK_REQUIRE_FUSE:-0}" = 1 ]; then
    echo "MLXK_REQUIRE_FUSE=1: failing" >&2
    exit 1
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo test"
# The namespace-level operation model (tests/namespace_model.rs, no FUSE): 20,000 operations.
export MLXK_MODEL_OPS=${MLXK_MODEL_OPS:-20000}
# Every `mlxk --json` reply the tests produce is kept here and checked against mlx-knife's
# JSON schema below.
MLXK_JSON_REPLIES=$(mktemp -d "${TMPDIR:-/tmp}/mlxk-json-replies.XXXXXX")
export MLXK_JSON_REPLIES
trap 'rm -rf "$MLXK_JSON_REPLIES"' EXIT
cargo test --all-targets

step "mlx-knife JSON API: every --json reply against its schema (scripts/validate_json.py)"
if [ -n "${MLXK_PEER_PYTHON:-}" ]; then
  "$MLXK_PEER_PYTHON" scripts/validate_json.py \
    tests/interop/mlx-knife-json-api.schema.json "$MLXK_JSON_REPLIES"
else
  echo "!!!!!!!! SKIP: no peer python (jsonschema); the replies were not validated !!!!!!!!"
  if [ "${MLXK_REQUIRE_PEERS:-0}" = 1 ]; then
    echo "MLXK_REQUIRE_PEERS=1: failing" >&2
    exit 1
  fi
fi

step "POSIX conformance of the writable mount (scripts/conformance.sh, pjdfstest)"
CONFORMANCE_PEERS=0 scripts/conformance.sh

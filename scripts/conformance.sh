#!/usr/bin/env bash
# POSIX conformance of the writable mount: pjdfstest (the Rust port, ~400 cases) run against
#   1. a new workspace (a directory only the overlay holds),
#   2. a directory inside a cached model (union with the cache below),
# and, for comparison, against a plain ext4 directory and Debian's fuse-overlayfs over the same
# lower/upper layout. The mount must pass everything pjdfstest runs (its skips are the
# features this kernel or configuration lacks: see docs/overlay.md); the peers are reported.
#
# Needs root (pjdfstest switches users; the mount uses --allow-other). Installs what it needs,
# idempotently: pjdfstest 0.2.2 (cargo install), fuse-overlayfs (apt), the user `tests`.
#
#   scripts/conformance.sh            # gate: exits 1 when the mount fails any case
#   CONFORMANCE_PEERS=0 scripts/...   # skip the ext4 / fuse-overlayfs comparison runs
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "!!!!!!!! SKIP conformance: $* !!!!!!!!"
  if [ "${MLXK_REQUIRE_FUSE:-0}" = 1 ]; then
    echo "MLXK_REQUIRE_FUSE=1: failing" >&2
    exit 1
  fi
  exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (pjdfstest switches users)"
[ -e /dev/fuse ] || skip "/dev/fuse is missing"

if ! command -v pjdfstest >/dev/null 2>&1; then
  echo "installing pjdfstest 0.2.2 (cargo install)"
  cargo install --quiet --locked pjdfstest --version 0.2.2
fi
PJD=$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null || useradd -M -N -g tests -s /usr/sbin/nologin tests
nogroup=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)
if [ "${CONFORMANCE_PEERS:-1}" = 1 ] && ! command -v fuse-overlayfs >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null 2>&1 \
    || echo "warning: fuse-overlayfs unavailable; its comparison run is skipped"
fi

cargo build --quiet --bin mlxk-fs --example fixture_cache
# Short paths: pjdfstest binds unix sockets inside the tested directory (sun_path holds 108
# bytes), and its other users must be able to walk to it.
work=$(mktemp -d /tmp/mc.XXXX)
chmod 755 "$work"
mnt="$work/m"
fo="$work/fo"
cleanup() {
  umount -l "$mnt" 2>/dev/null || true
  umount -l "$fo/merged" 2>/dev/null || true
  rm -rf "$work" /dev/shm/mlxk-conformance
}
trap cleanup EXIT

cat >"$work/pjdfstest.toml" <<EOF
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}
[settings]
# Above the kernel's coarse timestamp granularity (jiffies): ext4 itself fails below it.
naptime = 0.02
allow_remount = false
[dummy_auth]
entries = [["nobody", "$nogroup"], ["tests", "tests"]]
EOF

# run NAME DIR: pjdfstest in DIR, summary line printed, failures listed.
run() {
  local name=$1 dir=$2 log="$work/$1.log"
  mkdir -p "$dir" && chmod 777 "$dir"
  # The secondary filesystem (tmpfs) is where the EXDEV cases link and rename to.
  mkdir -p /dev/shm/mlxk-conformance && chmod 777 /dev/shm/mlxk-conformance
  "$PJD" -c "$work/pjdfstest.toml" -p "$dir" -s "/dev/shm/mlxk-conformance" >"$log" 2>&1 || true
  local summary
  summary=$(grep '^Summary:' "$log" || echo "Summary: did not finish")
  printf '%-32s %s\n' "$name" "${summary#Summary: }"
  grep -E ' FAILED$' "$log" | awk '{print "    FAILED " $1}' || true
  if [ -n "${CONFORMANCE_LOGS:-}" ]; then
    mkdir -p "$CONFORMANCE_LOGS" && cp "$log" "$CONFORMANCE_LOGS/"
  fi
  grep -q '^Summary: 0 failed' "$log"
}

fingerprint() {
  (cd "$work/hub" && find . -printf '%p %s %m %T@ %l\n' | sort && find . -type f -exec sha256sum {} + | sort) | sha256sum
}
./target/debug/examples/fixture_cache demo "$work/hub" >/dev/null
before=$(fingerprint)
mkdir -p "$mnt"
MLXK_FS_STATE_DIR="$work/state" ./target/debug/mlxk-fs mount "$mnt" --cache "$work/hub" \
  --overlay "$work/overlay" --allow-other >/dev/null

echo "pjdfstest $("$PJD" --version | awk '{print $2}'), kernel $(uname -r)"
status=0
run "mlxk-fs: new workspace" "$mnt/new/ws" || status=1
run "mlxk-fs: inside a cached model" "$mnt/mlx-community/Llama-tiny-f16/c" || status=1

if [ "${CONFORMANCE_PEERS:-1}" = 1 ]; then
  run "ext4 (plain directory)" "$work/e" || true
  if command -v fuse-overlayfs >/dev/null 2>&1; then
    mkdir -p "$fo/lower" "$fo/upper" "$fo/work" "$fo/merged"
    mkdir -p "$fo/lower/L"
    for f in "$mnt"/mlx-community/Llama-tiny-f16/*; do
      [ -f "$f" ] && cp "$f" "$fo/lower/L/"
    done
    fuse-overlayfs -o "lowerdir=$fo/lower,upperdir=$fo/upper,workdir=$fo/work,allow_other" "$fo/merged" 2>/dev/null
    run "fuse-overlayfs $(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs/{print $3; exit}')" \
      "$fo/merged/L/c" || true
  fi
fi

if [ "$before" != "$(fingerprint)" ]; then
  echo "the cache changed during the conformance run" >&2
  status=1
fi
exit $status

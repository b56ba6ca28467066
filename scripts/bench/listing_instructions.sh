#!/usr/bin/env bash
# The daemon's own work in `ls -lR` of a mount after a remount, counted in instructions by
# callgrind (issue 19): deterministic where the wall time of this shared VM is not, so a change
# of a few percent in the per-request work shows. Counts user-space instructions of the FUSE
# worker threads and of the read-ahead thread, apart (not the kernel's side of each request,
# not the main thread or the watcher). Under valgrind
# sha2 runs its portable code (no SHA extensions), so hashing weighs more than on hardware.
#
#   scripts/bench/listing_instructions.sh BIN HUB
#   (HUB from: target/release/examples/fixture_cache many DIR/hub1000 1000; valgrind installed;
#    run as root or a user who may mount)
set -euo pipefail
BIN=$(realpath "$1"); HUB=$(realpath "$2")
command -v valgrind >/dev/null || { echo "valgrind is needed (apt install valgrind)" >&2; exit 1; }
work=$(mktemp -d); trap 'fusermount3 -u "$work/mnt" 2>/dev/null || umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
export MLXK_FS_STATE_DIR=$work/state
mkdir -p "$work/mnt"
# First mount: the view cache is filled, so the measured listing is the one after a remount.
"$BIN" mount "$work/mnt" --cache "$HUB" --overlay "$work/ov" --no-passthrough >/dev/null
ls -lR "$work/mnt" >/dev/null
"$BIN" umount "$work/mnt" >/dev/null
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.out" \
  "$BIN" mount "$work/mnt" --cache "$HUB" --overlay "$work/ov" --no-passthrough -f \
  2>"$work/valgrind.log" &
vg=$!
for _ in $(seq 300); do [ -e "$work/mnt/.mlxk-fs-status" ] && break; sleep 1; done
[ -e "$work/mnt/.mlxk-fs-status" ] || { echo "the mount under valgrind did not come up" >&2; exit 1; }
# Let the watcher add its watches first: the listing is measured alone.
sleep 20
ls -lR "$work/mnt" >/dev/null
models=$(jq .models_viewed "$work/mnt/.mlxk-fs-status")
umount "$work/mnt"
wait "$vg"
# Every thread but the main one (cg.out-01) and the watcher's: the workers, the read-ahead
# thread that builds views ahead of the reader (counted apart: its work is off the chain of
# requests the reader waits on), and the signal and invalidation threads, which do next to
# nothing.
workers=0 ahead=0
for f in "$work"/cg.out-*; do
  case $f in *-01) continue ;; esac
  grep -q "Watcher" "$f" && continue
  n=$(awk '/^summary:/ {print $2}' "$f")
  if grep -q "build_ahead" "$f"; then ahead=$((ahead + n)); else workers=$((workers + n)); fi
done
echo "mlxk-fs $("$BIN" --version 2>/dev/null | awk '{print $NF}'), $models models listed after a remount"
echo "FUSE workers: $workers instructions, $((workers / models)) per model"
echo "read-ahead thread: $ahead instructions, $((ahead / models)) per model"
echo "both: $((workers + ahead)) instructions, $(((workers + ahead) / models)) per model"

#!/usr/bin/env bash
# The mount over many models (issue 19): with a fresh overlay and view cache, mount and time
# `ls -lR` of the whole mount, then unmount, mount again and time it again (the kernel's caches
# are empty both times; the second has the view cache). Reports the daemon's CPU time, RSS,
# header bytes read and views taken from the view cache. --no-passthrough: no file data is read.
#
#   scripts/bench/many_models.sh BIN HUB [mount args...]
#   (HUB from: target/release/examples/fixture_cache many DIR/hubN N; run as root or a user)
set -euo pipefail
BIN=$(realpath "$1"); HUB=$(realpath "$2"); shift 2
cd "$(dirname "$HUB")"; export MLXK_FS_STATE_DIR=$PWD/state
mkdir -p mnt
rm -rf state/views "ov-$(basename "$HUB")"
for round in first remount; do
  t0=$(date +%s%N)
  "$BIN" mount mnt --cache "$HUB" --overlay "ov-$(basename "$HUB")" --no-passthrough "$@" >/dev/null
  t1=$(date +%s%N)
  pid=$(jq .pid mnt/.mlxk-fs-status)
  c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  /usr/bin/time -f "%e %U %S" -o state/time.txt ls -lR mnt >/dev/null
  c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rss=$(ps -o rss= -p $pid)
  echo "$round mount $(( (t1-t0)/1000000 )) ms; ls wall/user/sys: $(cat state/time.txt); daemon cpu $(( (c1-c0)*10 )) ms; rss ${rss} KB; $(jq -c '{header_bytes_read,views_from_cache}' mnt/.mlxk-fs-status)"
  "$BIN" umount mnt >/dev/null
done

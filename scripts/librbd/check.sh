#!/usr/bin/env bash
# Checks whether this machine's librbd still has the snapshot-open race that
# src/store/rbd/ffi.rs works around (see snap-open-race.c): builds the loop,
# runs both modes under valgrind on a scratch pool of the test cluster
# (scripts/ceph.sh up), and prints the invalid accesses each mode caused.
#   scripts/librbd/check.sh [ITERATIONS]     (default 360)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${IMAGEFS_STATE:-/var/tmp/imagefs-backends}"
export CEPH_CONF="$state/ceph/ceph.conf" POOL=librbd-race
n="${1:-360}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
gcc -O1 -o "$work/race" "$here/snap-open-race.c" -lrbd -lrados
ceph osd pool create "$POOL" 8 >/dev/null 2>&1 || true
rbd pool init "$POOL"
for mode in open-at-snap snap-set; do
    valgrind --log-file="$work/$mode.log" "$work/race" "$mode" "$n"
    echo "$mode: $(grep -c 'Invalid read\|Invalid write' "$work/$mode.log" || true) invalid accesses in $n open/stat/close loops"
done

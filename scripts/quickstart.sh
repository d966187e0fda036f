#!/usr/bin/env bash
# Installs what imagefs needs, builds it, mounts the embedded default (one
# file store "local" in /var/lib/imagefs/local) and copies an image in.
# Usage: bash scripts/quickstart.sh [MOUNTPOINT]   (default /images; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/images}

need=()
for p in fuse3 libssl-dev pkg-config qemu-utils attr; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
cargo build --release --locked
install -m 0755 target/release/imagefs /usr/local/bin/imagefs

mkdir -p "$mnt"
if ! grep -q "^imagefs $mnt fuse" /proc/mounts; then
    imagefs mount "$mnt" --log-file /var/log/imagefs.log
fi
echo "== mounted: $(grep "^imagefs $mnt fuse" /proc/mounts)"
ls -l "$mnt"

# An image, as Glance would name it: a small qcow2 converted from raw.
id=$(cat /proc/sys/kernel/random/uuid)
src=$(mktemp --suffix=.raw)
head -c 32M /dev/urandom > "$src"
qemu-img convert -f raw -O qcow2 "$src" "$src.qcow2"
cp "$src.qcow2" "$mnt/local/$id"
cmp "$src.qcow2" "$mnt/local/$id"
rm -f "$src" "$src.qcow2"
echo "== copied an image in:"
ls -l "$mnt/local/"
qemu-img info "$mnt/local/$id" | head -4
getfattr -d "$mnt/local/$id" 2>/dev/null
echo "== on disk, where Glance's file store expects it:"
ls -l /var/lib/imagefs/local/
echo "unmount with: fusermount3 -u $mnt"

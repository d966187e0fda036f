#!/usr/bin/env bash
# Measures the FUSE settings imagefs keeps, each against its alternative, in
# one run: passthrough on/off, kernel read-ahead 128 KiB vs 1 MiB (reads served
# by the daemon), 1 vs 4 dispatch threads (4 concurrent readers through the
# daemon), and the cost of the getxattr(security.capability) the kernel sends
# before each write (answered in the FUSE thread, no store call).
#   scripts/bench-fuse-settings.sh [--size-mib 1024] [--runs 3] [--out BENCHMARKS.md]
set -Eeuo pipefail
SIZE_MIB=1024; RUNS=3; OUT=BENCHMARKS.md; BINARY=target/release/imagefs
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BINARY=$(realpath "$BINARY")
W=$(mktemp -d /var/tmp/imagefs-fusebench.XXXXXX)
MNT=$W/mnt; DATA=$W/data; mkdir -p "$MNT" "$DATA"
cleanup() {
    grep -q " $MNT " /proc/mounts && fusermount3 -u "$MNT" 2>/dev/null
    [[ -f $W/pid ]] && kill "$(cat "$W/pid")" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
head -c "${SIZE_MIB}M" /dev/urandom > "$DATA/img"
for i in 1 2 3 4; do cp "$DATA/img" "$DATA/img$i"; done

mount_with() { # passthrough read_ahead_kb threads
    printf '[mount]\npassthrough = %s\nread_ahead_kb = %s\nthreads = %s\n[stores.s]\ntype = "file"\ndatadir = "%s"\n' \
        "$1" "$2" "$3" "$DATA" > "$W/c.toml"
    "$BINARY" mount "$MNT" --config "$W/c.toml" --pid-file "$W/pid"
}
umount_it() {
    local pid; pid=$(cat "$W/pid")
    fusermount3 -u "$MNT"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { python3 -c 'import sys,time; t=time.monotonic(); import subprocess; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(f"{time.monotonic()-t:.4f}")' "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mbps() { awk -v s="$1" -v m="$2" 'BEGIN{printf "%.0f", m * 1.048576 / s}'; }

one_reader() { drop; secs dd if="$MNT/s/img" of=/dev/null bs=1M; }
four_readers() {
    drop
    secs bash -c "for i in 1 2 3 4; do dd if=$MNT/s/img\$i of=/dev/null bs=1M 2>/dev/null & done; wait"
}
writer() { # 4 KiB writes: one getxattr(security.capability) per write(2)
    rm -f "$MNT/s/w"
    secs dd if=/dev/zero of="$MNT/s/w" bs=4k count=$((SIZE_MIB * 64))
}

declare -A R
run_case() { # name passthrough ra threads fn size_multiplier
    local name=$1 fn=$5 mult=$6 t=()
    mount_with "$2" "$3" "$4"
    for _ in $(seq "$RUNS"); do t+=("$($fn)"); done
    umount_it
    local m; m=$(printf '%s\n' "${t[@]}" | median)
    R[$name]="$(mbps "$m" $((SIZE_MIB * mult))) MB/s (median ${m}s of ${t[*]})"
    echo "$name: ${R[$name]}" >&2
}
run_case "read, passthrough on" true 1024 4 one_reader 1
run_case "read, passthrough off, read_ahead_kb 1024" false 1024 4 one_reader 1
run_case "read, passthrough off, read_ahead_kb 128" false 128 4 one_reader 1
run_case "4 readers, passthrough off, threads 4" false 1024 4 four_readers 4
run_case "4 readers, passthrough off, threads 1" false 1024 1 four_readers 4
run_case "4 KiB writes (one security.capability getxattr each)" true 1024 4 writer 1

{
    echo
    echo "## FUSE settings ($(date -u +%F), ${SIZE_MIB} MiB, $RUNS runs, medians)"
    echo
    echo "Kernel $(uname -r); \`scripts/bench-fuse-settings.sh --size-mib $SIZE_MIB --runs $RUNS\`."
    echo
    echo "| case | throughput |"
    echo "|---|---|"
    for k in "read, passthrough on" "read, passthrough off, read_ahead_kb 1024" \
             "read, passthrough off, read_ahead_kb 128" "4 readers, passthrough off, threads 4" \
             "4 readers, passthrough off, threads 1" "4 KiB writes (one security.capability getxattr each)"; do
        echo "| $k | ${R[$k]} |"
    done
} | tee -a "$OUT"

#!/usr/bin/env bash
# Side-by-side benchmarks of imagefs against what users would use instead.
#
#   scripts/bench.sh file [--size-gib 4 | --size-mib N] [--runs 3] [--ls-files 10000]
#                         [--systems raw,imagefs,rclone-off,rclone-writes]
#   scripts/bench.sh rbd  [--sizes-gib 1,4 | --sizes-mib N,M] [--runs 3]
#                         [--systems rbd-direct,imagefs,rbd-fuse] [--ceph-conf FILE]
#                         [--pool images] [--user glance]
#   scripts/bench.sh s3   [--sizes-gib 1,4 | --sizes-mib N,M] [--runs 3] [--rss-mib 8192]
#                         [--ls-files 2000] [--systems sdk-direct,imagefs,imagefs-nosum,rclone,s3fs]
#                         [--s3-env FILE] [--s3bench target/release/examples/s3bench] [--ceph-conf FILE]
#   all: [--out BENCHMARKS.md] [--binary target/release/imagefs] [--workdir /var/tmp] [--keep]
#   (--systems may also name imagefs-nosum: imagefs with [mount] checksums = false;
#   for rbd also rbd-fuse-bw: rbd-fuse -o big_writes, and rbd-direct-sums; for s3
#   sdk-direct-sums: the direct write plus Glance's two checksums, see below)
#
# Suite `file`: sequential write and read of SIZE through
#   raw            a plain directory on the disk (the baseline)
#   imagefs        `imagefs mount` of a file store whose datadir is that directory
#   rclone-off     `rclone mount DIR MNT --vfs-cache-mode off`
#   rclone-writes  `rclone mount DIR MNT --vfs-cache-mode writes`
#   imagefs-nosum  (opt-in) imagefs with `[mount] checksums = false`
# all in one run, RUNS times, then `ls -l` of LS_FILES small files (cold and
# warm).
# A write is timed from the start of `dd ... conv=fsync` until the data is in
# the datadir at full size and `sync FILE` on it has returned; for every system
# but rclone-writes that last step costs nothing (dd's fsync already did it),
# for rclone-writes it includes the VFS write-back (upload after close). The
# time until dd itself returned is reported too ("dd only").
# Reads: `sync; echo 3 > /proc/sys/vm/drop_caches` then `dd of=/dev/null bs=1M`
# of one file created in the datadir before anything is mounted.
#
# Suite `rbd`: sequential write and read of each SIZE (default 1 and 4 GiB) of
# the same random data in the Ceph pool POOL (default: the cluster of
# scripts/ceph.sh, started if needed) through
#   rbd-direct     `rbd import --object-size 8M SRC POOL/ID` (= --order 23) and
#                  `rbd export POOL/ID@snap - > /dev/null` (the baseline)
#   imagefs        `imagefs mount` of one rbd store (user USER): `dd bs=4M
#                  conv=fsync` into MNT/fast/ID (timed until dd returned: its
#                  close commits) and `dd bs=4M` of MNT/fast/ID to /dev/null
#   rbd-fuse       Debian's `rbd-fuse -f -p POOL -c CEPH_CONF MNT` (client.admin):
#                  the file is created first (untimed; rbd-fuse makes a 1 GiB
#                  image and grows it as writes pass its end), then
#                  `dd bs=4M conv=fsync,notrunc` into it, `dd bs=4M` of MNT/ID
#   imagefs-nosum, rbd-fuse-bw  (opt-in) checksums = false; rbd-fuse -o big_writes
#   rbd-direct-sums (opt-in, writes only) rbd import with `md5sum SRC` and
#                  `sha512sum SRC` running beside it, timed until all three
#                  are done, CPU of all three: storing an image directly with
#                  the checksums Glance keeps (what imagefs computes inline)
# Every run and size reads a fresh image laid out as Glance does (rbd import,
# snapshot `snap`, protected), after dropping the kernel's caches and the OSD's
# (`ceph tell osd.* cache drop`). Each FUSE system is mounted for its own
# turn only (so no daemon caches across runs and no watcher blocks `rbd rm`).
# The imagefs daemon's peak RSS (VmHWM reset before each write, and VmRSS
# sampled every 0.1 s) is reported for every write.
#
# Both suites write medians, ratios vs the baseline and the daemons' CPU seconds
# per GiB (utime+stime from /proc/PID/stat; for rbd-direct the rbd process's
# own user+sys) as a markdown section appended to OUT.
#
# Needs root (drop_caches, FUSE), fusermount3, python3 (file: rclone; rbd: rbd,
# ceph, rbd-fuse). Every mount and daemon it starts is stopped by mountpoint and
# PID on exit, also on failure, and every RBD image it made is removed.
#
# Suite `s3`: sequential write and read of each SIZE (default 1 and 4 GiB) of
# the same random data, one bucket per run, on the S3 server of S3_ENV (default:
# the RGW of scripts/ceph.sh, started with --rgw if needed; S3_ENDPOINT,
# S3_ACCESS_KEY, S3_SECRET_KEY), through
#   sdk-direct     examples/s3bench (build: cargo build --release --example s3bench):
#                  the SDK client of the S3 store without FUSE; `put` = multipart
#                  upload with imagefs's default parts (10 MiB, 6 in flight), `get` =
#                  4 MiB ranged GETs, 8 in flight (imagefs's read-ahead) (the baseline)
#   sdk-direct-sums (opt-in, writes only) `s3bench put` with `md5sum SRC` and
#                  `sha512sum SRC` beside it, as rbd-direct-sums
#   imagefs        `imagefs mount` of one s3 store on the bucket
#   imagefs-nosum  the same with `[mount] checksums = false`
#   rclone         `rclone mount rgw:BUCKET MNT --vfs-cache-mode off` (config file
#                  in the work dir, mode 0600; cache off streams reads and writes)
#   s3fs           `s3fs BUCKET MNT -f -o passwd_file=...,url=...,use_path_request_style`
# Writes: `dd bs=4M conv=fsync` into the mount, timed until dd returned and a HEAD
# shows the object at full size. Reads: caches dropped (the kernel's and, with the
# local RGW, the OSD's), `dd bs=4M` of an object written by `s3bench put` to
# /dev/null. Each FUSE system is mounted afresh for each turn (write + read); CPU =
# the daemon's utime+stime, for s3bench its own user+sys; peak RSS as in rbd. In
# run 1 the first size's writes and reads are compared with the source (untimed).
# Then the imagefs daemon's peak RSS during one write of RSS_MIB (default 8192;
# the largest source repeated through a pipe), and `ls -l` of LS_FILES (default
# 2000) objects of 1 KiB, cold (fresh mount, caches dropped) and warm, against
# `s3bench list` (ListObjectsV2 of the top level, delimiter `/`, every page: the
# images, not imagefs's `.imagefs-attrs/` index); the objects get a known mtime
# through imagefs first (`touch -d`), checked after remounting with stat and
# `rsync -a`. With the local RGW, deleted data is reclaimed after each size
# (`radosgw-admin gc process --include-all`); every bucket it made is removed.
set -Eeuo pipefail

# ---------------------------------------------------------------- options
SUITE=""
SIZES=""        # comma-separated MiB; default per suite
RUNS=3
OUT="BENCHMARKS.md"
BINARY="target/release/imagefs"
WORKDIR_PARENT="/var/tmp"
LS_FILES=10000
SYSTEMS=""
KEEP=0
CEPH_CONF_FILE="${CEPH_CONF:-/var/tmp/imagefs-backends/ceph/ceph.conf}"
POOL=images
RBD_USER=glance
STORE=fast
RSS_MIB=8192
S3_ENV_FILE=/var/tmp/imagefs-backends/ceph/rgw.env
S3BENCH=target/release/examples/s3bench
LS_FILES_SET=0

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}
die() { echo "bench: error: $*" >&2; exit 1; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

to_mib() { # unit-in-MiB list -> comma-separated whole MiB
    awk -v u="$1" -v l="$2" 'BEGIN { n = split(l, a, ","); for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? "," : ""), a[i] * u }'
}

[[ $# -ge 1 ]] || usage
case "$1" in
    file|rbd|s3) SUITE=$1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown suite '$1' (known: file, rbd, s3)" ;;
esac
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size-gib|--sizes-gib) SIZES=$(to_mib 1024 "$2"); shift 2 ;;
        --size-mib|--sizes-mib) SIZES=$(to_mib 1 "$2"); shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        --workdir) WORKDIR_PARENT=$2; shift 2 ;;
        --ls-files) LS_FILES=$2; LS_FILES_SET=1; shift 2 ;;
        --rss-mib) RSS_MIB=$2; shift 2 ;;
        --s3-env) S3_ENV_FILE=$2; shift 2 ;;
        --s3bench) S3BENCH=$2; shift 2 ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --ceph-conf) CEPH_CONF_FILE=$2; shift 2 ;;
        --pool) POOL=$2; shift 2 ;;
        --user) RBD_USER=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown option '$1'" ;;
    esac
done
case $SUITE in
    file) BASELINE=raw; ALL_SYSTEMS=(raw imagefs imagefs-nosum rclone-off rclone-writes)
          : "${SYSTEMS:=raw,imagefs,rclone-off,rclone-writes}" "${SIZES:=4096}" ;;
    rbd) BASELINE=rbd-direct; ALL_SYSTEMS=(rbd-direct rbd-direct-sums imagefs imagefs-nosum rbd-fuse rbd-fuse-bw)
          : "${SYSTEMS:=rbd-direct,imagefs,rbd-fuse}" "${SIZES:=1024,4096}" ;;
    s3) BASELINE=sdk-direct; ALL_SYSTEMS=(sdk-direct sdk-direct-sums imagefs imagefs-nosum rclone s3fs)
          : "${SYSTEMS:=sdk-direct,imagefs,imagefs-nosum,rclone,s3fs}" "${SIZES:=1024,4096}"
          ((LS_FILES_SET)) || LS_FILES=2000 ;;
esac
IFS=, read -r -a SIZES_MIB <<<"$SIZES"
for m in "${SIZES_MIB[@]}"; do
    [[ $m =~ ^[0-9]+$ && $m -gt 0 ]] || die "sizes must be positive whole numbers of MiB (got '$SIZES')"
done
[[ $SUITE != file || ${#SIZES_MIB[@]} -eq 1 ]] || die "the file suite takes one size"
SIZE_MIB=${SIZES_MIB[0]}
[[ $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] || die "--runs must be a positive integer"
[[ $LS_FILES =~ ^[0-9]+$ ]] || die "--ls-files must be an integer (0 skips the listing test)"
[[ $RSS_MIB =~ ^[0-9]+$ ]] || die "--rss-mib must be an integer of MiB (0 skips the RSS test)"

declare -A WANT=()
IFS=, read -r -a _systems <<<"$SYSTEMS"
for s in "${_systems[@]}"; do
    [[ " ${ALL_SYSTEMS[*]} " == *" $s "* ]] || die "unknown system '$s' for suite $SUITE (known: ${ALL_SYSTEMS[*]})"
    WANT[$s]=1
done
WANT[$BASELINE]=1 # the baseline every ratio is computed against
ORDER=()
for s in "${ALL_SYSTEMS[@]}"; do
    if [[ -n ${WANT[$s]:-} ]]; then ORDER+=("$s"); fi
done
wants_imagefs() { [[ -n ${WANT[imagefs]:-}${WANT[imagefs-nosum]:-} ]]; }

# ---------------------------------------------------------------- prerequisites
[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches, FUSE mounts)"
[[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable"
command -v fusermount3 >/dev/null || die "fusermount3 not found (package fuse3)"
command -v python3 >/dev/null || die "python3 not found"
if [[ -n ${WANT[rclone-off]:-}${WANT[rclone-writes]:-} ]]; then
    command -v rclone >/dev/null || die "rclone not found"
fi
if wants_imagefs; then
    [[ -x $BINARY ]] || die "imagefs binary '$BINARY' not found (build it or pass --binary)"
    BINARY=$(readlink -f "$BINARY")
fi
[[ -d $WORKDIR_PARENT ]] || die "--workdir $WORKDIR_PARENT is not a directory"
[[ $WORKDIR_PARENT != *[[:space:]]* ]] || die "--workdir must not contain whitespace"

CLK_TCK=$(getconf CLK_TCK)
SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
SIZE_GIB=$(awk -v m="$SIZE_MIB" 'BEGIN{ printf "%.4g", m / 1024 }')
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

RBD=(rbd -c "$CEPH_CONF_FILE")
CEPH=(timeout 60 ceph -c "$CEPH_CONF_FILE")
if [[ $SUITE == rbd ]]; then
    for c in rbd ceph; do command -v "$c" >/dev/null || die "$c not found (package ceph-common)"; done
    if [[ -n ${WANT[rbd-fuse]:-}${WANT[rbd-fuse-bw]:-} ]]; then
        command -v rbd-fuse >/dev/null || die "rbd-fuse not found (package rbd-fuse)"
    fi
    [[ -x /usr/bin/time ]] || die "/usr/bin/time not found (package time)"
    if [[ $CEPH_CONF_FILE == /var/tmp/imagefs-backends/ceph/ceph.conf ]]; then
        bash "$REPO_ROOT/scripts/ceph.sh" up >&2 || die "scripts/ceph.sh up failed"
    fi
    [[ -r $CEPH_CONF_FILE ]] || die "ceph config $CEPH_CONF_FILE not readable"
    "${RBD[@]}" ls "$POOL" >/dev/null || die "cannot list pool $POOL with $CEPH_CONF_FILE"
fi
RGW_LOCAL=0 # the S3 server is the RGW of CEPH_CONF_FILE: drop the OSD's caches, reclaim deleted data
if [[ $SUITE == s3 ]]; then
    [[ -x /usr/bin/time ]] || die "/usr/bin/time not found (package time)"
    if [[ -n ${WANT[rclone]:-} ]]; then command -v rclone >/dev/null || die "rclone not found"; fi
    if [[ -n ${WANT[s3fs]:-} ]]; then command -v s3fs >/dev/null || die "s3fs not found (package s3fs)"; fi
    [[ -x $S3BENCH ]] || die "s3bench '$S3BENCH' not found (cargo build --release --example s3bench, or pass --s3bench)"
    S3BENCH=$(readlink -f "$S3BENCH")
    if [[ $S3_ENV_FILE == /var/tmp/imagefs-backends/ceph/rgw.env ]]; then
        bash "$REPO_ROOT/scripts/ceph.sh" up --rgw >&2 || die "scripts/ceph.sh up --rgw failed"
    fi
    [[ -r $S3_ENV_FILE ]] || die "S3 env file $S3_ENV_FILE not readable"
    for v in S3_ENDPOINT S3_ACCESS_KEY S3_SECRET_KEY; do
        val=$(sed -n "s/^$v=//p" "$S3_ENV_FILE" | tail -1)
        [[ -n $val ]] || die "$S3_ENV_FILE has no $v"
        export "$v=$val"
    done
    unset val
    [[ $S3_ENDPOINT == http*://* ]] || die "S3_ENDPOINT in $S3_ENV_FILE is not an http(s) URL"
    if [[ -r $CEPH_CONF_FILE ]] && command -v radosgw-admin >/dev/null && command -v ceph >/dev/null &&
        [[ $(dirname "$S3_ENV_FILE") == "$(dirname "$CEPH_CONF_FILE")" ]]; then
        RGW_LOCAL=1
    fi
fi

# ---------------------------------------------------------------- cleanup
WORK=""
SRCS=()         # source data files we wrote
MOUNTS=()       # mountpoints we mounted, in order
declare -A MOUNT_PID=()   # mountpoint -> daemon pid
declare -A PID_COMM=()    # pid -> "child" (our own child: its pid cannot be reused
                          # before we reap it) or the /proc/PID/comm it had when
                          # we learnt it (a detached daemon: never signal a reused pid)
declare -A RBD_IMAGES=()  # RBD image ids we created (or had a system create)
declare -A BUCKETS=()     # S3 buckets we created

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

pid_alive() { # pid is ours and still running
    local pid=$1 comm
    [[ -n ${PID_COMM[$pid]:-} ]] || return 1
    if [[ ${PID_COMM[$pid]} == child ]]; then
        # a zombie counts as gone
        [[ -r /proc/$pid/stat && $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]]
        return
    fi
    [[ -r /proc/$pid/comm ]] || return 1
    comm=$(<"/proc/$pid/comm") || return 1
    [[ $comm == "${PID_COMM[$pid]:-}" ]]
}

stop_pid() { # wait up to 10 s for a daemon to leave after its unmount, then TERM, then KILL
    local pid=$1 i
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
        log "daemon $pid still running after unmount: SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    if pid_alive "$pid"; then
        log "daemon $pid ignores SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    if [[ ${PID_COMM[$pid]:-} == child ]] && ! pid_alive "$pid"; then
        wait "$pid" 2>/dev/null || true # reap it
    fi
    unset 'PID_COMM[$pid]'
}

unmount() { # unmount one of our mounts and stop its daemon
    local mnt=$1 pid=${MOUNT_PID[$1]:-} i
    if is_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || {
            sleep 1
            fusermount3 -u "$mnt" 2>/dev/null || { log "unmount $mnt busy: lazy unmount"; fusermount3 -uz "$mnt" || true; }
        }
    fi
    [[ -n $pid ]] && stop_pid "$pid"
    unset 'MOUNT_PID[$mnt]'
    local keep=()
    for i in "${MOUNTS[@]}"; do [[ $i != "$mnt" ]] && keep+=("$i"); done
    MOUNTS=("${keep[@]}")
}

rbd_remove() { # id: unprotect, purge the snapshots and remove POOL/id (retrying while
    local id=$1 i  # a watcher that just closed the image is still registered)
    for ((i = 0; i < 45; i++)); do
        if ! "${RBD[@]}" info "$POOL/$id" >/dev/null 2>"$WORK/rbd-info.err"; then
            if grep -q 'No such file' "$WORK/rbd-info.err"; then unset 'RBD_IMAGES[$id]'; return 0; fi
        else
            "${RBD[@]}" snap unprotect "$POOL/$id@snap" >/dev/null 2>&1 || true
            "${RBD[@]}" snap purge --no-progress "$POOL/$id" >/dev/null 2>&1 || true
            if "${RBD[@]}" rm --no-progress "$POOL/$id" >/dev/null 2>"$WORK/rbd-rm.err"; then unset 'RBD_IMAGES[$id]'; return 0; fi
        fi
        sleep 1
    done
    log "could not remove $POOL/$id: $(cat "$WORK/rbd-rm.err" "$WORK/rbd-info.err" 2>/dev/null | grep -v asok | tail -2)"
    return 1
}

rbd_leftovers() { # ids... -> images in POOL whose name contains one of the ids
    local id
    "${RBD[@]}" ls "$POOL" 2>/dev/null | while read -r name; do
        for id in "$@"; do [[ $name == *"$id"* ]] && { echo "$name"; break; }; done
    done
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do unmount "${MOUNTS[i]}"; done
    for i in "${!PID_COMM[@]}"; do stop_pid "$i"; done
    if ((${#RBD_IMAGES[@]} > 0)); then
        for i in $(rbd_leftovers "${!RBD_IMAGES[@]}"); do RBD_IMAGES[$i]=1; done
        for i in "${!RBD_IMAGES[@]}"; do rbd_remove "$i"; done
    fi
    for i in "${!BUCKETS[@]}"; do s3_rb "$i"; done
    for i in "${SRCS[@]}"; do rm -f "$i"; done
    if [[ -n $WORK && -d $WORK ]]; then
        if grep -q " $WORK/" /proc/mounts; then
            log "something is still mounted under $WORK: leaving it in place"
        elif [[ $KEEP -eq 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    [[ $rc -ne 0 ]] && log "failed (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
uuid() { cat /proc/sys/kernel/random/uuid; }

cpu_ticks() { # utime + stime of a pid, in clock ticks (fields 14 and 15 of /proc/PID/stat)
    local pid=$1 stat
    [[ -n $pid ]] || { echo 0; return; }
    stat=$(<"/proc/$pid/stat")
    stat=${stat##*) } # drop "pid (comm) "; the rest starts at field 3
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

drop_caches() { # the kernel's; with the rbd suite (s3: the local RGW) also the OSDs' (bluestore onodes and buffers)
    sync
    echo 3 >/proc/sys/vm/drop_caches
    if [[ $SUITE == rbd || $RGW_LOCAL -eq 1 ]]; then "${CEPH[@]}" tell 'osd.*' cache drop >/dev/null 2>&1 || die "ceph tell osd.* cache drop failed"; fi
}

file_size() { stat -c %s "$1" 2>/dev/null || echo -1; }

wait_mounted() { # mountpoint pid seconds
    local mnt=$1 pid=$2 t=$3 i
    for ((i = 0; i < t * 10; i++)); do
        is_mounted "$mnt" && return 0
        pid_alive "$pid" || return 1
        sleep 0.1
    done
    return 1
}

# All results go to one file: "<kind>\t<system>\t<run>\t<value>".
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$WORK/results.tsv"; }

median_of() { # kind system -> median of recorded values (empty if none)
    awk -F'\t' -v k="$1" -v s="$2" '$1 == k && $2 == s { print $4 }' "$WORK/results.tsv" |
        sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
values_of() { # kind system -> "v1 / v2 / v3" in run order, formatted
    awk -F'\t' -v k="$1" -v s="$2" -v fmt="$3" '$1 == k && $2 == s { out = out (n++ ? " / " : "") sprintf(fmt, $4) } END { print out }' "$WORK/results.tsv"
}
fmt() { # printf format, value (empty -> "n/a")
    if [[ -z $2 ]]; then echo "n/a"; else awk -v f="$1" -v v="$2" 'BEGIN { printf f, v }'; fi
}
ratio() { # a b -> a/b formatted as 0.00x
    if [[ -z $1 || -z $2 ]]; then echo "n/a"; else awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2fx", a / b }'; fi
}
median_cells() { # kind system -> "MB/s | ratio vs the baseline | CPU s/GiB" (the kind's _cpu)
    local v
    v=$(median_of "$1" "$2")
    printf '%s | %s | %s' "$(fmt '%.0f' "$v")" "$(ratio "$v" "$(median_of "$1" "$BASELINE")")" \
        "$(fmt '%.2f' "$(median_of "${1%%:*}_cpu${1#"${1%%:*}"}" "$2")")"
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
per_gib() { awk -v t="$1" -v b="$2" 'BEGIN { printf "%.3f", t / (b / 1073741824) }'; }
cpu_per_gib() { per_gib "$(awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')" "$2"; }

run_dd() { # system if of bs conv: dd, its report in $WORK/dd.log, dies on failure
    local s=$1 conv=()
    [[ -n $5 ]] && conv=("conv=$5")
    dd if="$2" of="$3" bs="$4" "${conv[@]}" 2>"$WORK/dd.log" || { cat "$WORK/dd.log" >&2; die "$s: dd if=$2 of=$3 failed"; }
}
timed_dd() { # system pid if of bs conv [command...]: run_dd (then the command, inside the timing),
    local c0 c1 t0 t1  # timed; sets EL (s), TICKS and CPU_S (the pid's CPU over it)
    c0=$(cpu_ticks "$2")
    t0=$EPOCHREALTIME
    run_dd "$1" "$3" "$4" "$5" "$6"
    if (($# > 6)); then "${@:7}"; fi
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "$2")
    EL=$(elapsed "$t0" "$t1")
    TICKS=$((c1 - c0))
    CPU_S=$(awk -v t="$TICKS" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')
}
dd_bytes() { awk '/bytes/ { print $1; exit }' "$WORK/dd.log"; }

make_source() { # MiB -> SOURCE: a file of random data, on tmpfs if it fits
    local mib=$1 dir avail
    avail=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || echo 0)
    if ((${avail:-0} > mib * 1024 + 512 * 1024)); then dir=/dev/shm; else dir=/tmp; fi
    SRCDIR=$dir
    SOURCE="$dir/imagefs-bench-src.$$.$mib"
    SRCS+=("$SOURCE")
    log "source: $mib MiB of random data in $SOURCE"
    head -c "$((mib * 1048576))" /dev/urandom >"$SOURCE"
}

daemon_errors() { # log it and set DAEMON_ERRORS: ERROR/WARN lines the imagefs daemons logged
    local f n
    DAEMON_ERRORS=0
    for f in "$WORK"/imagefs-*.daemon.log; do
        [[ -f $f ]] || continue
        n=$(grep -c -E ' (ERROR|WARN) ' "$f" || true)
        if ((n > 0)); then
            DAEMON_ERRORS=$((DAEMON_ERRORS + n))
            log "$(basename "$f"): $n ERROR/WARN lines, first ones:"
            grep -m 3 -E ' (ERROR|WARN) ' "$f" >&2 || true
        fi
    done
}

host_facts() { # the report's line about the machine
    echo "- Host: kernel $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
}
imagefs_facts() { # the report's line about the imagefs binary
    local ver="-" git_rev git_dirty
    if wants_imagefs; then
        ver="$BINARY ($("$BINARY" --version 2>/dev/null | head -1 || true); built $(date -u -r "$BINARY" '+%F %T UTC'))"
    fi
    git_rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
    git_dirty=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (dirty)" || true)
    echo "- imagefs: $ver, repository at $git_rev$git_dirty"
}

# ---------------------------------------------------------------- mounts
declare -A CMD=() # system -> exact mount command line (for the report)

# Mount functions leave the daemon's pid in MOUNTED_PID (not printed: a command
# substitution would run them in a subshell and lose the cleanup bookkeeping).
MOUNTED_PID=""

mount_imagefs() { # system (imagefs|imagefs-nosum) mountpoint store-toml
    local sys=$1 mnt=$2 conf pidf pid extra="" base
    if [[ $sys == imagefs-nosum ]]; then extra=$'[mount]\nchecksums = false\n'; fi
    mkdir -p "$mnt"
    base="$WORK/imagefs-$(basename "$mnt")"
    conf="$base.toml" pidf="$base.pid"
    printf '%s%s' "$extra" "$3" >"$conf"
    rm -f "$pidf"
    chmod 600 "$conf"
    # (the report shows the config without the S3 keys)
    [[ -n ${CMD[$sys]:-} ]] || CMD[$sys]="$BINARY mount $mnt --config $conf --pid-file $pidf --log-file $base.daemon.log   # $conf: $(sed -E 's/^((access|secret)_key = ).*/\1"***"/' "$conf" | tr '\n' ' ')"
    if ! timeout 60 "$BINARY" mount "$mnt" --config "$conf" --pid-file "$pidf" \
        --log-file "$base.daemon.log" >"$base.log" 2>&1; then
        cat "$base.log" >&2
        [[ -s $pidf ]] && { pid=$(<"$pidf"); PID_COMM[$pid]=$(cat "/proc/$pid/comm" 2>/dev/null || echo imagefs); MOUNT_PID[$mnt]=$pid; }
        is_mounted "$mnt" && MOUNTS+=("$mnt")
        die "imagefs mount $mnt failed"
    fi
    [[ -s $pidf ]] || die "imagefs did not write its pid file $pidf"
    pid=$(<"$pidf")
    [[ -r /proc/$pid/comm ]] || die "imagefs pid $pid from $pidf is not running"
    PID_COMM[$pid]=$(<"/proc/$pid/comm")
    MOUNT_PID[$mnt]=$pid
    MOUNTS+=("$mnt")
    wait_mounted "$mnt" "$pid" 10 || die "imagefs returned but $mnt is not in /proc/mounts"
    MOUNTED_PID=$pid
}

mount_child() { # system mountpoint logfile command...: a FUSE daemon in the foreground as our background child
    local sys=$1 mnt=$2 logf=$3 pid
    shift 3
    mkdir -p "$mnt"
    # Run in the foreground as our background child (rather than letting it
    # fork) so that we know its PID for CPU accounting and cleanup. Every
    # mountpoint is a fresh empty directory.
    [[ -n ${CMD[$sys]:-} ]] || CMD[$sys]="$* &"
    "$@" </dev/null >"$logf" 2>&1 &
    pid=$!
    PID_COMM[$pid]=child
    MOUNT_PID[$mnt]=$pid
    MOUNTS+=("$mnt")
    wait_mounted "$mnt" "$pid" 30 || { cat "$logf" >&2; die "$sys: $mnt did not show up in /proc/mounts"; }
    MOUNTED_PID=$pid
}

mount_rclone() { # datadir mountpoint cache-mode
    mount_child "rclone-$3" "$2" "$WORK/rclone-$(basename "$2").log" \
        rclone mount "$1" "$2" --vfs-cache-mode "$3" --cache-dir "$WORK/rclone-cache-$3" --config /dev/null
}

mount_rbd_fuse() { # system (rbd-fuse|rbd-fuse-bw) mountpoint
    local opts=()
    [[ $1 == rbd-fuse-bw ]] && opts=(-o big_writes)
    mount_child "$1" "$2" "$WORK/$1-$(basename "$2").log" rbd-fuse -f -p "$POOL" -c "$CEPH_CONF_FILE" "${opts[@]}" "$2"
}

WORK=$(mktemp -d "$WORKDIR_PARENT/imagefs-bench.XXXXXX")
: >"$WORK/results.tsv"

# ================================================================ suite file
suite_file() {
    DATA="$WORK/data"
    mkdir -p "$DATA"

    local need_disk avail_disk
    need_disk=$(((SIZE_MIB * 3 + 1024) * 1024)) # KiB: read file + one written file + rclone's write cache
    avail_disk=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    ((avail_disk > need_disk)) || die "need $((need_disk >> 20)) GiB free in $WORKDIR_PARENT, have $((avail_disk >> 20)) GiB"

    make_source "$SIZE_MIB"
    SRC=$SOURCE

    READ_ID=$(uuid)
    log "read file: $DATA/$READ_ID"
    dd if="$SRC" of="$DATA/$READ_ID" bs=1M conv=fsync status=none

    declare -gA MNT=() PID=() TARGET=()
    TARGET[raw]=$DATA
    PID[raw]=""
    local s mode
    for s in imagefs imagefs-nosum; do
        [[ -n ${WANT[$s]:-} ]] || continue
        MNT[$s]="$WORK/mnt-$s"
        mount_imagefs "$s" "${MNT[$s]}" "$(printf '[stores.local]\ntype = "file"\ndatadir = "%s"\n' "$DATA")"
        PID[$s]=$MOUNTED_PID
        TARGET[$s]="${MNT[$s]}/local"
        [[ -d ${TARGET[$s]} ]] || die "${TARGET[$s]} does not exist in the imagefs mount"
    done
    for mode in off writes; do
        [[ -n ${WANT[rclone-$mode]:-} ]] || continue
        MNT[rclone-$mode]="$WORK/mnt-rclone-$mode"
        mount_rclone "$DATA" "${MNT[rclone-$mode]}" "$mode"
        PID[rclone-$mode]=$MOUNTED_PID
        TARGET[rclone-$mode]="${MNT[rclone-$mode]}"
    done
    log "mounted: ${!MNT[*]}"
    for s in "${ORDER[@]}"; do
        [[ -f ${TARGET[$s]}/$READ_ID ]] || die "$s: the read file is not visible at ${TARGET[$s]}/$READ_ID"
    done

    local run n k
    for ((run = 1; run <= RUNS; run++)); do
        log "run $run/$RUNS ($SIZE_MIB MiB)"
        # Each run starts one system further down the list, so that no system is
        # always measured first (right after the source file was written, say).
        n=${#ORDER[@]}
        for ((k = 0; k < n; k++)); do
            s=${ORDER[(k + run - 1) % n]}
            file_write "$s" "$run"
            file_read "$s" "$run"
        done
    done
    # Content check of reads (not timed): each system returns the bytes of the file.
    for s in "${ORDER[@]}"; do
        cmp -s "$SRC" "${TARGET[$s]}/$READ_ID" || die "$s: reading ${TARGET[$s]}/$READ_ID returns other data than was stored"
    done

    for ((k = ${#MOUNTS[@]} - 1; k >= 0; k--)); do unmount "${MOUNTS[k]}"; done
    rm -f "$SRC"
    rm -rf "$DATA"

    file_listing
    file_report >"$WORK/report.md"
}

file_write() { # system run
    local s=$1 run=$2 id t0 t1 t2 c0 c1 size
    id=$(uuid)
    drop_caches
    c0=$(cpu_ticks "${PID[$s]}")
    t0=$EPOCHREALTIME
    run_dd "$s" "$SRC" "${TARGET[$s]}/$id" 1M fsync
    t1=$EPOCHREALTIME
    # Until the data is in the datadir at full size (give up once the size has
    # not moved for 60 s), then synced.
    local last=-2 still=0
    while :; do
        size=$(file_size "$DATA/$id")
        [[ $size -eq $SIZE_BYTES ]] && break
        if [[ $size -ne $last ]]; then last=$size still=0; else still=$((still + 1)); fi
        ((still < 3000)) || die "$s: $DATA/$id has been stuck at $size bytes for 60 s after the write, expected $SIZE_BYTES"
        sleep 0.02
    done
    sync "$DATA/$id"
    t2=$EPOCHREALTIME
    c1=$(cpu_ticks "${PID[$s]}")
    local el dd_el
    el=$(elapsed "$t0" "$t2")
    dd_el=$(elapsed "$t0" "$t1")
    record write "$s" "$run" "$(mbps "$SIZE_BYTES" "$el")"
    record write_dd "$s" "$run" "$(mbps "$SIZE_BYTES" "$dd_el")"
    [[ -n ${PID[$s]} ]] && record write_cpu "$s" "$run" "$(cpu_per_gib $((c1 - c0)) "$SIZE_BYTES")"
    # Content check (not timed): what landed in the datadir is what was written.
    cmp -s "$SRC" "$DATA/$id" || die "$s: $DATA/$id differs from the source data"
    log "  $s write: $(mbps "$SIZE_BYTES" "$el") MB/s (dd only $(mbps "$SIZE_BYTES" "$dd_el") MB/s), daemon $((c1 - c0)) ticks"
    rm -f "$DATA/$id"
}

file_read() { # system run
    local s=$1 run=$2 bytes
    drop_caches
    timed_dd "$s" "${PID[$s]}" "${TARGET[$s]}/$READ_ID" /dev/null 1M ""
    bytes=$(dd_bytes)
    [[ $bytes -eq $SIZE_BYTES ]] || die "$s: read $bytes bytes, expected $SIZE_BYTES"
    record read "$s" "$run" "$(mbps "$SIZE_BYTES" "$EL")"
    [[ -n ${PID[$s]} ]] && record read_cpu "$s" "$run" "$(cpu_per_gib "$TICKS" "$SIZE_BYTES")"
    log "  $s read: $(mbps "$SIZE_BYTES" "$EL") MB/s, daemon $TICKS ticks"
}

time_ls() { # system run label dir pid
    local s=$1 run=$2 label=$3 dir=$4 pid=$5 t0 t1 c0 c1 n
    c0=$(cpu_ticks "$pid")
    t0=$EPOCHREALTIME
    LC_ALL=C ls -l "$dir" >"$WORK/ls.out"
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "$pid")
    n=$(($(wc -l <"$WORK/ls.out") - 1))
    [[ $n -eq $LS_FILES ]] || die "$s: ls -l $dir shows $n entries, expected $LS_FILES"
    record "ls_$label" "$s" "$run" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')"
    [[ -n $pid ]] && record "ls_${label}_cpu" "$s" "$run" "$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')"
    return 0
}

file_listing() { # ls -l of LS_FILES small files, cold and warm, per system
    LS_SYSTEMS=()
    ((LS_FILES > 0)) || return 0
    local lsdata="$WORK/lsdata" run s dir pid mnt
    mkdir -p "$lsdata"
    log "creating $LS_FILES files of 1 KiB in $lsdata"
    python3 - "$lsdata" "$LS_FILES" <<'EOF'
import os, sys, uuid
d, n = sys.argv[1], int(sys.argv[2])
blob = os.urandom(1024)
for _ in range(n):
    with open(os.path.join(d, str(uuid.uuid4())), "wb") as f:
        f.write(blob)
EOF
    sync

    LS_SYSTEMS=(raw)
    if [[ -n ${WANT[imagefs]:-} ]]; then LS_SYSTEMS+=(imagefs); fi
    if [[ -n ${WANT[rclone-off]:-}${WANT[rclone-writes]:-} ]]; then LS_SYSTEMS+=(rclone); fi
    for ((run = 1; run <= RUNS; run++)); do
        log "ls -l run $run/$RUNS"
        for s in "${LS_SYSTEMS[@]}"; do
            dir=$lsdata pid="" mnt=""
            case $s in
                imagefs) mnt="$WORK/ls-imagefs-$run"; mount_imagefs imagefs "$mnt" "$(printf '[stores.local]\ntype = "file"\ndatadir = "%s"\n' "$lsdata")"; pid=$MOUNTED_PID; dir="$mnt/local" ;;
                rclone) mnt="$WORK/ls-rclone-$run"; mount_rclone "$lsdata" "$mnt" off; pid=$MOUNTED_PID; dir=$mnt ;;
            esac
            drop_caches # cold: fresh mount (for the FUSE systems) and no cached inodes
            time_ls "$s" "$run" cold "$dir" "$pid"
            time_ls "$s" "$run" warm "$dir" "$pid"
            if [[ -n $mnt ]]; then unmount "$mnt"; fi
            log "  $s: cold $(values_of ls_cold "$s" '%.3f' | awk -F' / ' '{ print $NF }') s, warm $(values_of ls_warm "$s" '%.3f' | awk -F' / ' '{ print $NF }') s"
        done
    done
}

file_report() {
    daemon_errors
    declare -A LABEL=(
        [raw]="raw directory"
        [imagefs]="imagefs (file store)"
        [imagefs-nosum]="imagefs (file store), checksums = false"
        [rclone-off]="rclone mount, --vfs-cache-mode off"
        [rclone-writes]="rclone mount, --vfs-cache-mode writes"
        [rclone]="rclone mount, --vfs-cache-mode off"
    )
    local disk rclone_ver s lc lw c w
    disk=$(df -PT "$WORKDIR_PARENT" | awk 'NR == 2 { print $1 " (" $2 ")" }')
    rclone_ver=$(rclone version 2>/dev/null | head -1 || echo "-")

    echo
    echo "## File store: sequential I/O and listing, $(date -u '+%F %H:%M UTC')"
    echo
    host_facts
    echo "- Disk: $disk, directory $WORKDIR_PARENT; source data read from $SRCDIR$([[ $SRCDIR == /dev/shm ]] && echo ' (tmpfs, RAM)')"
    imagefs_facts
    echo "- rclone: $rclone_ver"
    echo "- $SIZE_GIB GiB per transfer, $RUNS run(s), medians. MB/s = 10^6 bytes/s. CPU = the daemon's utime+stime"
    echo "  (/proc/PID/stat, CLK_TCK $CLK_TCK) per GiB transferred; the raw directory has no daemon."
    echo
    echo "| system | write MB/s | vs raw | CPU s/GiB | read MB/s | vs raw | CPU s/GiB | write, dd only MB/s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${ORDER[@]}"; do
        printf '| %s | %s | %s | %s |\n' "${LABEL[$s]}" "$(median_cells write "$s")" "$(median_cells read "$s")" \
            "$(fmt '%.0f' "$(median_of write_dd "$s")")"
    done
    echo
    echo "Write = from the start of dd until the file is in the datadir at full size and \`sync FILE\` returned"
    echo "(for rclone's \`writes\` mode this includes the write-back after close, which by default starts"
    echo "\`--vfs-write-back\` 5 s after the file is closed); \"dd only\" = until dd returned."
    echo
    if ((DAEMON_ERRORS > 0)); then
        echo "The imagefs daemons logged $DAEMON_ERRORS ERROR/WARN lines during this benchmark."
        echo
    fi
    echo "Per run (MB/s, in run order; run N starts with the Nth system of the table):"
    echo
    for s in "${ORDER[@]}"; do
        if [[ $s == raw ]]; then
            echo "- ${LABEL[$s]}: write $(values_of write "$s" '%.0f'); read $(values_of read "$s" '%.0f')"
        else
            echo "- ${LABEL[$s]}: write $(values_of write "$s" '%.0f') (CPU s/GiB $(values_of write_cpu "$s" '%.2f')); read $(values_of read "$s" '%.0f') (CPU s/GiB $(values_of read_cpu "$s" '%.2f'))"
        fi
    done
    if ((${#LS_SYSTEMS[@]} > 0)); then
        echo
        echo "### \`ls -l\` of $LS_FILES files of 1 KiB (seconds, median of $RUNS)"
        echo
        echo "Cold = caches dropped and, for FUSE, a fresh mount; warm = the same command again right after."
        echo
        echo "| system | cold s | vs raw | warm s | vs raw | daemon CPU s, cold |"
        echo "|---|---:|---:|---:|---:|---:|"
        lc=$(median_of ls_cold raw) lw=$(median_of ls_warm raw)
        for s in "${LS_SYSTEMS[@]}"; do
            c=$(median_of ls_cold "$s") w=$(median_of ls_warm "$s")
            printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" \
                "$(fmt '%.3f' "$c")" "$(ratio "$c" "$lc")" "$(fmt '%.3f' "$w")" "$(ratio "$w" "$lw")" \
                "$(fmt '%.2f' "$(median_of ls_cold_cpu "$s")")"
        done
    fi
    echo
    echo "### Commands"
    echo
    echo '```sh'
    echo "# $0 file --size-mib $SIZE_MIB --runs $RUNS --ls-files $LS_FILES --systems $SYSTEMS --workdir $WORKDIR_PARENT"
    echo "head -c $SIZE_BYTES /dev/urandom > $SRCDIR/imagefs-bench-src.PID.$SIZE_MIB"
    echo "# DATA=$WORKDIR_PARENT/imagefs-bench.XXXXXX/data; one file DATA/<read-uuid> written with dd conv=fsync before mounting"
    for s in "${ORDER[@]}"; do
        [[ -n ${CMD[$s]:-} ]] && echo "${CMD[$s]}"
    done
    echo "# write (TARGET = DATA, MNT/local for imagefs, MNT for rclone; a new uuid each time):"
    echo "sync; echo 3 > /proc/sys/vm/drop_caches"
    echo "dd if=SRC of=TARGET/<uuid> bs=1M conv=fsync; (wait until DATA/<uuid> has $SIZE_BYTES bytes); sync DATA/<uuid>"
    echo "# read:"
    echo "sync; echo 3 > /proc/sys/vm/drop_caches; dd if=TARGET/<read-uuid> of=/dev/null bs=1M"
    if ((${#LS_SYSTEMS[@]} > 0)); then
        echo "# listing: DIR = LSDATA, or a fresh mount of LSDATA per run (same commands as above, with"
        echo "# LSDATA instead of DATA; rclone with --vfs-cache-mode off), then:"
        echo "sync; echo 3 > /proc/sys/vm/drop_caches; LC_ALL=C ls -l DIR > FILE   # cold"
        echo "LC_ALL=C ls -l DIR > FILE                                              # warm"
    fi
    echo "# unmount: fusermount3 -u MNT; the daemon is waited for by PID"
    echo '```'
}

# ================================================================ suite rbd
declare -A SRC_OF=() # MiB -> source file
NOTES=()             # odd things seen, for the report
ALL_IDS=()           # every image id this suite used

note() { log "NOTE: $*"; NOTES+=("$*"); }

suite_rbd() {
    local mib max=0 avail need run n k rid
    for mib in "${SIZES_MIB[@]}"; do ((mib > max)) && max=$mib; done
    # The pool holds at most one read image and one written image at a time.
    avail=$("${CEPH[@]}" df --format json 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["pools"]:
    if p["name"] == sys.argv[1]: print(p["stats"]["max_avail"] >> 20)' "$POOL")
    need=$((max * 2 + 1024))
    ((${avail:-0} > need)) || die "pool $POOL has ${avail:-?} MiB available, need $need MiB"
    for mib in "${SIZES_MIB[@]}"; do
        make_source "$mib"
        SRC_OF[$mib]=$SOURCE
    done
    RBD_STORE_TOML=$(printf '[stores.%s]\ntype = "rbd"\npool = "%s"\nuser = "%s"\nceph_conf = "%s"\n' \
        "$STORE" "$POOL" "$RBD_USER" "$CEPH_CONF_FILE")

    n=${#ORDER[@]}
    for ((run = 1; run <= RUNS; run++)); do
        for mib in "${SIZES_MIB[@]}"; do
            log "run $run/$RUNS, $mib MiB"
            # The image every system reads in this run, laid out as Glance does.
            rid=$(uuid)
            RBD_IMAGES[$rid]=1
            ALL_IDS+=("$rid")
            rbd_import "${SRC_OF[$mib]}" "$rid"
            glance_snap "$rid"
            # Each run starts one system further down the list.
            for ((k = 0; k < n; k++)); do
                rbd_turn "${ORDER[(k + run - 1) % n]}" "$run" "$mib" "$rid"
            done
            rbd_remove "$rid" || die "could not remove the read image $POOL/$rid"
        done
    done
    for mib in "${SIZES_MIB[@]}"; do rm -f "${SRC_OF[$mib]}"; done
    local trashed
    trashed=$("${RBD[@]}" trash ls "$POOL" 2>/dev/null | grep -F -f <(printf '%s\n' "${ALL_IDS[@]}") || true)
    [[ -z $trashed ]] || note "images of this benchmark are in the RBD trash of $POOL: $(echo "$trashed" | tr '\n' ' ')"
    rbd_report >"$WORK/report.md"
}

rbd_import() { # source id: the baseline's write; sets EL, CPU_S and RSS_KB
    timed_rbd import --no-progress --object-size 8M "$1" "$POOL/$2"
}

glance_snap() { # id: the snapshot Glance makes of every image it stores (untimed)
    "${RBD[@]}" snap create --no-progress "$POOL/$1@snap" >/dev/null 2>&1 || die "rbd snap create $POOL/$1@snap failed"
    "${RBD[@]}" snap protect "$POOL/$1@snap" 2>/dev/null || die "rbd snap protect $POOL/$1@snap failed"
}

timed_rbd() { timed_cmd "${RBD[@]}" "$@"; }

with_sums() { # source command...: the command with md5sum and sha512sum of the source beside it (under timed_cmd)
    timed_cmd bash -c 'f=$1; shift; md5sum "$f" >/dev/null & m=$!; sha512sum "$f" >/dev/null & h=$!
        "$@"; r=$?; wait $m || r=1; wait $h || r=1; exit $r' with_sums "$@"
}

timed_cmd() { # command...: runs it under /usr/bin/time; sets EL, CPU_S (user+sys) and RSS_KB
    local t0 t1 u sy m
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%U %S %M' -o "$WORK/time.out" "$@" 2>"$WORK/cmd.err" ||
        { grep -v asok "$WORK/cmd.err" >&2; die "$(basename "$1") ${*:2} failed"; }
    t1=$EPOCHREALTIME
    read -r u sy m < <(tail -1 "$WORK/time.out")
    EL=$(elapsed "$t0" "$t1")
    CPU_S=$(awk -v a="$u" -v b="$sy" 'BEGIN { print a + b }')
    RSS_KB=$m
}

warm_source() { # so that a write measures the backend, not the source's disk
    sync
    cat "$1" >/dev/null
}

rbd_check() { # system id bytes snapshot(yes|no): the image a write left in the pool
    local s=$1 id=$2 bytes=$3 info size prot
    info=$("${RBD[@]}" info --format json "$POOL/$id" 2>/dev/null) || die "$s: no image $POOL/$id after the write"
    size=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["size"])' "$info")
    if [[ $s == rbd-fuse* ]]; then
        ((size >= bytes)) || die "$s: $POOL/$id has $size bytes, expected at least $bytes"
    else
        ((size == bytes)) || die "$s: $POOL/$id has $size bytes, expected $bytes"
    fi
    [[ $4 == yes ]] || return 0
    info=$("${RBD[@]}" info --format json "$POOL/$id@snap" 2>/dev/null) || die "$s: $POOL/$id has no snapshot snap after the write (not committed as Glance lays images out)"
    prot=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("protected"))' "$info")
    [[ $prot == true ]] || note "$s: $POOL/$id@snap is not protected after the write (Glance protects it)"
}

rbd_verify() { # system what image-spec-or-path source bytes: content check (not timed)
    local s=$1 what=$2 from=$3 src=$4 bytes=$5
    if [[ $from == /* ]]; then
        cmp -s -n "$bytes" "$from" "$src" || die "$s: $what: $from differs from the source data"
    else
        cmp -s -n "$bytes" <("${RBD[@]}" export --no-progress "$from" - 2>/dev/null) "$src" ||
            die "$s: $what: rbd export $from differs from the source data"
        # Reap rbd now: its SIGCHLD arriving while this shell waits on a FUSE
        # call (the next stat) makes the kernel send FUSE_INTERRUPT.
        wait "$!" 2>/dev/null || true
    fi
}

rss_begin() { # pid: sample its VmRSS every 0.1 s in the background
    local pid=$1
    (while [[ -r /proc/$pid/status ]]; do
        awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true
        sleep 0.1
    done) >"$WORK/rss.samples" 2>/dev/null &
    SAMPLER=$!
    PID_COMM[$SAMPLER]=child
}

rss_end() { # pid -> RSS_KB: the larger of the sampled maximum and VmHWM (the mount is fresh for each write)
    local pid=$1 hwm
    kill -TERM "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    unset 'PID_COMM[$SAMPLER]'
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    RSS_KB=$(awk -v h="${hwm:-0}" 'BEGIN { m = h } $1 > m { m = $1 } END { print m }' "$WORK/rss.samples")
}

record_transfer() { # kind system run MiB: EL, CPU_S and (writes) RSS_KB as recorded results
    local kind=$1 s=$2 run=$3 mib=$4 bytes=$(($4 * 1048576))
    record "$kind:$mib" "$s" "$run" "$(mbps "$bytes" "$EL")"
    record "${kind}_cpu:$mib" "$s" "$run" "$(per_gib "$CPU_S" "$bytes")"
    [[ $kind == write ]] && record "write_rss:$mib" "$s" "$run" "$(awk -v k="$RSS_KB" 'BEGIN { print k / 1024 }')"
    log "  $s $kind $mib MiB: $(mbps "$bytes" "$EL") MB/s, CPU $CPU_S s$([[ $kind == write ]] && echo ", peak RSS $((RSS_KB / 1024)) MiB")"
}

rbd_turn() { # system run MiB read-id: one system's write and read
    local s=$1 run=$2 mib=$3 rid=$4 bytes=$(($3 * 1048576)) src=${SRC_OF[$3]} wid mnt="" dir="" ddconv=fsync pid left
    wid=$(uuid)
    RBD_IMAGES[$wid]=1
    ALL_IDS+=("$wid")
    case $s in
        rbd-direct)
            warm_source "$src"
            rbd_import "$src" "$wid"
            record_transfer write "$s" "$run" "$mib"
            glance_snap "$wid"
            rbd_check "$s" "$wid" "$bytes" yes
            ((run > 1)) || rbd_verify "$s" write "$POOL/$wid@snap" "$src" "$bytes"
            drop_caches
            timed_rbd export --no-progress "$POOL/$rid@snap" - >/dev/null
            record_transfer read "$s" "$run" "$mib"
            ((run > 1)) || rbd_verify "$s" read "$POOL/$rid@snap" "$src" "$bytes"
            ;;
        rbd-direct-sums)
            CMD[$s]="/usr/bin/time -f '%U %S %M' bash -c 'md5sum SRC & sha512sum SRC & rbd import --no-progress --object-size 8M SRC $POOL/<uuid>; wait'   # rbd-direct-sums write"
            warm_source "$src"
            with_sums "$src" "${RBD[@]}" import --no-progress --object-size 8M "$src" "$POOL/$wid"
            record_transfer write "$s" "$run" "$mib"
            glance_snap "$wid"
            rbd_check "$s" "$wid" "$bytes" yes
            ;;
        imagefs*)
            mnt="$WORK/mnt-$s-$run-$mib"
            mount_imagefs "$s" "$mnt" "$RBD_STORE_TOML"
            dir="$mnt/$STORE"
            ;;
        rbd-fuse*)
            mnt="$WORK/mnt-$s-$run-$mib"
            mount_rbd_fuse "$s" "$mnt"
            dir=$mnt ddconv=fsync,notrunc
            # rbd-fuse creates the image (1 GiB) here; dd then writes into it
            # without truncating (with O_TRUNC rbd-fuse 16.2 drops the data).
            : >"$dir/$wid" || die "$s: cannot create $dir/$wid"
            ;;
    esac
    if [[ -n $mnt ]]; then
        pid=$MOUNTED_PID
        [[ -d $dir ]] || die "$s: $dir does not exist in the mount"
        fuse_write "$s" "$run" "$mib" "$dir/$wid" "$pid" "$ddconv"
        rbd_check "$s" "$wid" "$bytes" "$([[ $s == imagefs* ]] && echo yes || echo no)"
        ((run > 1)) || rbd_verify "$s" write "$POOL/$wid$([[ $s == imagefs* ]] && echo @snap)" "$src" "$bytes"
        fuse_read "$s" "$run" "$mib" "$dir/$rid" "$pid"
        ((run > 1)) || rbd_verify "$s" read "$dir/$rid" "$src" "$bytes"
        unmount "$mnt"
    fi
    rbd_remove "$wid" || die "could not remove $POOL/$wid"
    left=$(rbd_leftovers "$wid" "$rid" | grep -v -x -e "$rid" || true)
    if [[ -n $left ]]; then
        note "$s left images in $POOL after its write was removed: $(echo "$left" | tr '\n' ' ')"
        for wid in $left; do RBD_IMAGES[$wid]=1; rbd_remove "$wid" || true; done
    fi
}

fuse_write() { # system run MiB path pid conv [command...: after dd, inside the timing]
    local s=$1 run=$2 mib=$3 path=$4 pid=$5 conv=$6
    shift 6
    warm_source "${SRC_OF[$mib]}"
    rss_begin "$pid"
    timed_dd "$s" "$pid" "${SRC_OF[$mib]}" "$path" 4M "$conv" "$@"
    rss_end "$pid"
    record_transfer write "$s" "$run" "$mib"
}

fuse_read() { # system run MiB path pid
    local s=$1 run=$2 mib=$3 path=$4 pid=$5 bytes
    [[ -f $path ]] || die "$s: the read image is not visible at $path"
    drop_caches
    timed_dd "$s" "$pid" "$path" /dev/null 4M ""
    bytes=$(dd_bytes)
    [[ $bytes -eq $((mib * 1048576)) ]] || die "$s: read $bytes bytes from $path, expected $((mib * 1048576))"
    record_transfer read "$s" "$run" "$mib"
}

sums_table() { # direct-sums-system: imagefs's writes against the direct write that computes the same checksums
    [[ -n ${WANT[$1]:-} && -n ${WANT[imagefs]:-} ]] || return 0
    local mib w d
    echo "Writes with Glance's two checksums on both sides: imagefs computes md5 and sha512 inline, ${LABEL[$1]} runs"
    echo "md5sum and sha512sum of the source beside the direct write (CPU: all three processes):"
    echo
    echo "| size | imagefs write MB/s | CPU s/GiB | ${LABEL[$1]} MB/s | CPU s/GiB | imagefs vs it |"
    echo "|---|---:|---:|---:|---:|---:|"
    for mib in "${SIZES_MIB[@]}"; do
        w=$(median_of "write:$mib" imagefs) d=$(median_of "write:$mib" "$1")
        printf '| %s | %s | %s | %s | %s | %s |\n' "$(awk -v m="$mib" 'BEGIN { if (m % 1024) print m " MiB"; else print m / 1024 " GiB" }')" \
            "$(fmt '%.0f' "$w")" "$(fmt '%.2f' "$(median_of "write_cpu:$mib" imagefs)")" \
            "$(fmt '%.0f' "$d")" "$(fmt '%.2f' "$(median_of "write_cpu:$mib" "$1")")" "$(ratio "$w" "$d")"
    done
    echo
}

rbd_report() {
    daemon_errors
    declare -A LABEL=(
        [rbd-direct]="rbd import / rbd export"
        [rbd-direct-sums]="rbd import + md5sum + sha512sum"
        [imagefs]="imagefs (rbd store)"
        [imagefs-nosum]="imagefs (rbd store), checksums = false"
        [rbd-fuse]="rbd-fuse"
        [rbd-fuse-bw]="rbd-fuse -o big_writes"
    )
    local s mib osd_disk ceph_ver mem_target fuse_ver sizes_txt
    ceph_ver=$("${CEPH[@]}" version 2>/dev/null | head -1 || echo "?")
    mem_target=$("${CEPH[@]}" tell osd.0 config get osd_memory_target 2>/dev/null | python3 -c 'import json, sys; print(int(json.load(sys.stdin)["osd_memory_target"]) >> 20)' 2>/dev/null || echo "?")
    osd_disk=$("${CEPH[@]}" osd metadata 0 --format json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("%s on %s, %s (%s), %d GiB" % (d.get("osd_objectstore"), d.get("bluestore_bdev_path"), d.get("bluestore_bdev_access_mode"), d.get("bluestore_bdev_devices"), int(d.get("bluestore_bdev_size", 0)) >> 30))' 2>/dev/null || echo "?")
    fuse_ver=$(dpkg-query -W -f '${Version}' rbd-fuse 2>/dev/null || echo "?")
    sizes_txt=$(printf '%s MiB, ' "${SIZES_MIB[@]}")

    echo
    echo "## RBD store: sequential I/O, $(date -u '+%F %H:%M UTC')"
    echo
    host_facts
    echo "- Ceph: $ceph_ver; $("${CEPH[@]}" osd stat 2>/dev/null | head -1 || true); pool $POOL size $("${CEPH[@]}" osd pool get "$POOL" size 2>/dev/null | awk '{ print $2 }'), $("${CEPH[@]}" osd pool get "$POOL" pg_num 2>/dev/null | awk '{ print $2 }') PGs; OSD: $osd_disk; osd_memory_target $mem_target MiB; all on loopback ($CEPH_CONF_FILE)"
    echo "- Disk under the OSD: $(df -PT "$(dirname "$CEPH_CONF_FILE")" | awk 'NR == 2 { print $1 " (" $2 ")" }'); source data read from $SRCDIR$([[ $SRCDIR == /dev/shm ]] && echo ' (tmpfs, RAM)')"
    imagefs_facts
    echo "- rbd-fuse: Debian package $fuse_ver (libfuse2 $(dpkg-query -W -f '${Version}' libfuse2 2>/dev/null || echo "?")), client.admin; imagefs as client.$RBD_USER (profile rbd pool=$POOL)"
    echo "- Sizes ${sizes_txt%, }, $RUNS run(s), medians. MB/s = 10^6 bytes/s. CPU = the daemon's utime+stime (/proc/PID/stat,"
    echo "  CLK_TCK $CLK_TCK) over the transfer, per GiB; for rbd import/export the rbd process's own user+sys (/usr/bin/time)."
    echo "  Peak RSS = the daemon's VmHWM after the write (each FUSE system is mounted afresh for its write+read), or the"
    echo "  maximum of VmRSS sampled every 0.1 s if larger; for rbd import its maxrss."
    echo
    echo "| system | size | write MB/s | vs rbd import | CPU s/GiB | peak RSS MiB | read MB/s | vs rbd export | CPU s/GiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for mib in "${SIZES_MIB[@]}"; do
        for s in "${ORDER[@]}"; do
            printf '| %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" "$(awk -v m="$mib" 'BEGIN { if (m % 1024) print m " MiB"; else print m / 1024 " GiB" }')" \
                "$(median_cells "write:$mib" "$s")" "$(fmt '%.0f' "$(median_of "write_rss:$mib" "$s")")" "$(median_cells "read:$mib" "$s")"
        done
    done
    echo
    sums_table rbd-direct-sums
    echo "Write: rbd import of the source file (then, untimed, \`rbd snap create\` + \`protect\`); through imagefs and rbd-fuse, \`dd bs=4M"
    echo "conv=fsync\` until dd returned (imagefs commits, i.e. creates and protects \`snap\`, at close). Read: after dropping the"
    echo "kernel's and the OSD's caches, the whole image of this run (rbd import + snap create + snap protect beforehand)."
    echo "Every write's image was checked in the pool afterwards (size; for imagefs the protected snapshot \`snap\`), and in"
    echo "run 1 the content of every write and read was compared with the source (untimed)."
    echo
    if ((DAEMON_ERRORS > 0)); then
        echo "The imagefs daemons logged $DAEMON_ERRORS ERROR/WARN lines during this benchmark."
        echo
    fi
    for s in "${NOTES[@]}"; do echo "- Note: $s"; done
    ((${#NOTES[@]} == 0)) || echo
    echo "Per run (MB/s, in run order; run N starts with the Nth system of the table):"
    echo
    for mib in "${SIZES_MIB[@]}"; do
        for s in "${ORDER[@]}"; do
            echo "- ${LABEL[$s]}, $mib MiB: write $(values_of "write:$mib" "$s" '%.0f') (CPU s/GiB $(values_of "write_cpu:$mib" "$s" '%.2f'); RSS MiB $(values_of "write_rss:$mib" "$s" '%.0f')); read $(values_of "read:$mib" "$s" '%.0f') (CPU s/GiB $(values_of "read_cpu:$mib" "$s" '%.2f'))"
        done
    done
    echo
    echo "### Commands"
    echo
    echo '```sh'
    echo "# $0 rbd --sizes-mib $(IFS=,; echo "${SIZES_MIB[*]}") --runs $RUNS --systems $SYSTEMS --ceph-conf $CEPH_CONF_FILE --pool $POOL --user $RBD_USER"
    echo "export CEPH_CONF=$CEPH_CONF_FILE"
    echo "head -c BYTES /dev/urandom > $SRCDIR/imagefs-bench-src.PID.MIB; cat SRC > /dev/null   # before each write"
    echo "# each run and size: the read image"
    echo "rbd import --object-size 8M SRC $POOL/<read-uuid>; rbd snap create $POOL/<read-uuid>@snap; rbd snap protect $POOL/<read-uuid>@snap"
    echo "# drop caches (before every read):"
    echo "sync; echo 3 > /proc/sys/vm/drop_caches; ceph tell 'osd.*' cache drop"
    echo "# rbd-direct"
    echo "/usr/bin/time -f '%U %S %M' rbd import --no-progress --object-size 8M SRC $POOL/<uuid>   # write"
    echo "/usr/bin/time -f '%U %S %M' rbd export --no-progress $POOL/<read-uuid>@snap - > /dev/null   # read"
    for s in "${ORDER[@]}"; do
        [[ -n ${CMD[$s]:-} ]] && echo "${CMD[$s]}"
    done
    echo "# imagefs: write, read"
    echo "dd if=SRC of=MNT/$STORE/<uuid> bs=4M conv=fsync"
    echo "dd if=MNT/$STORE/<read-uuid> of=/dev/null bs=4M"
    echo "# rbd-fuse: write (the image is created by the first command, untimed), read"
    echo ": > MNT/<uuid>; dd if=SRC of=MNT/<uuid> bs=4M conv=fsync,notrunc"
    echo "dd if=MNT/<read-uuid> of=/dev/null bs=4M"
    echo "# after each system's turn: fusermount3 -u MNT (the daemon is waited for by PID), then"
    echo "rbd snap unprotect $POOL/<uuid>@snap; rbd snap purge $POOL/<uuid>; rbd rm $POOL/<uuid>"
    echo '```'
}

# ================================================================ suite s3
S3_STORE=s3          # the store's name in the imagefs config (its directory in the mount)
LS_MTIME=1600000000  # the mtime the listing objects get through imagefs (2020-09-13 12:26:40 UTC)

s3_bucket() { # name: create it (and remember it for cleanup)
    BUCKETS[$1]=1
    "$S3BENCH" mb "$1" 2>"$WORK/s3bench.err" || { cat "$WORK/s3bench.err" >&2; die "cannot create bucket $1"; }
}

s3_rb() { # bucket: empty (objects, multipart uploads) and remove it; a bucket already gone is fine
    if "$S3BENCH" rb "$1" 2>"$WORK/s3bench.err" || grep -q NoSuchBucket "$WORK/s3bench.err"; then
        unset 'BUCKETS[$1]'
        return 0
    fi
    log "could not remove bucket $1: $(tail -1 "$WORK/s3bench.err")"
    return 1
}

s3_rm() { # bucket key
    "$S3BENCH" rm "$1" "$2" 2>"$WORK/s3bench.err" || { cat "$WORK/s3bench.err" >&2; die "cannot delete $1/$2"; }
}

s3_size() { "$S3BENCH" head "$1" "$2" 2>/dev/null || echo -1; } # bucket key -> bytes (-1: none)

wait_object() { # bucket key bytes: until a HEAD shows the object at full size (up to 60 s without progress)
    local b=$1 key=$2 bytes=$3 size last=-2 since=$EPOCHREALTIME
    while :; do
        size=$(s3_size "$b" "$key")
        [[ $size -eq $bytes ]] && return 0
        if [[ $size != "$last" ]]; then last=$size since=$EPOCHREALTIME; fi
        awk -v a="$since" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 60) }' &&
            die "object $b/$key has been at $size bytes for 60 s after the write, expected $bytes"
        sleep 0.05
    done
}

s3_verify() { # system what bucket key source bytes: content check through the SDK (not timed)
    "$S3BENCH" get "$3" "$4" --out - 2>/dev/null | cmp -s -n "$6" - "$5" ||
        die "$1: $2: object $3/$4 differs from the source data"
}

rgw_gc() { # with the local RGW: reclaim the data of deleted objects now (RGW's gc waits 2 h otherwise)
    ((RGW_LOCAL)) || return 0
    timeout 900 radosgw-admin -c "$CEPH_CONF_FILE" gc process --include-all >/dev/null 2>"$WORK/gc.err" ||
        note "radosgw-admin gc process failed: $(grep -v asok "$WORK/gc.err" | tail -1)"
}

rgw_avail_mib() { # MiB the RGW data pool may still take
    "${CEPH[@]}" df --format json 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["pools"]:
    if p["name"].endswith("rgw.buckets.data"): print(p["stats"]["max_avail"] >> 20)'
}

s3_store_toml() { # bucket -> the imagefs store config (defaults for part size and parallelism)
    printf '[stores.%s]\ntype = "s3"\nhost = "%s"\naccess_key = "%s"\nsecret_key = "%s"\nbucket = "%s"\n' \
        "$S3_STORE" "$S3_ENDPOINT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$1"
}

s3_mount() { # system mountpoint bucket -> DIR (where the objects are) and MOUNTED_PID
    local s=$1 mnt=$2 b=$3
    case $s in
        imagefs*)
            mount_imagefs "$s" "$mnt" "$(s3_store_toml "$b")"
            DIR="$mnt/$S3_STORE"
            ;;
        rclone)
            # (rclone's AWS SDK fails on an AWS_CA_BUNDLE in the environment: "unsupported transport")
            mount_child rclone "$mnt" "$WORK/rclone-$(basename "$mnt").log" \
                env -u AWS_CA_BUNDLE rclone mount "rgw:$b" "$mnt" --config "$RCLONE_CONF" --vfs-cache-mode off \
                --cache-dir "$WORK/rclone-cache"
            DIR=$mnt
            ;;
        s3fs)
            mount_child s3fs "$mnt" "$WORK/s3fs-$(basename "$mnt").log" \
                s3fs "$b" "$mnt" -f -o "passwd_file=$S3FS_PASSWD,url=$S3_ENDPOINT,use_path_request_style"
            DIR=$mnt
            ;;
    esac
    [[ -d $DIR ]] || die "$s: $DIR does not exist in the mount"
}

suite_s3() {
    local mib max=0 need avail run n k rid b
    for mib in "${SIZES_MIB[@]}"; do ((mib > max)) && max=$mib; done
    n=${#ORDER[@]}
    if ((RGW_LOCAL)); then
        log "reclaiming the data of deleted RGW objects (radosgw-admin gc process --include-all)"
        rgw_gc
        # At most: one read object and every system's write of the largest
        # size (deleted but not reclaimed until the size is done); the RSS write.
        need=$(((n + 1) * max + 1024))
        ((RSS_MIB + 1024 > need)) && need=$((RSS_MIB + 1024))
        avail=$(rgw_avail_mib)
        ((${avail:-0} > need)) || die "the RGW data pool has ${avail:-?} MiB available, need $need MiB"
    fi
    for mib in "${SIZES_MIB[@]}"; do
        make_source "$mib"
        SRC_OF[$mib]=$SOURCE
    done
    RCLONE_CONF="$WORK/rclone.conf" S3FS_PASSWD="$WORK/s3fs.passwd"
    (
        umask 077
        printf '[rgw]\ntype = s3\nprovider = Ceph\nendpoint = %s\naccess_key_id = %s\nsecret_access_key = %s\n' \
            "$S3_ENDPOINT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$RCLONE_CONF"
        printf '%s:%s\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$S3FS_PASSWD"
    )
    BUCKET_PREFIX="imagefs-bench-$(date +%s)-$$"

    for ((run = 1; run <= RUNS; run++)); do
        b="$BUCKET_PREFIX-r$run"
        s3_bucket "$b"
        for mib in "${SIZES_MIB[@]}"; do
            log "run $run/$RUNS, $mib MiB, bucket $b"
            # The object every system reads in this run, written as a Glance
            # upload would be (multipart, no imagefs metadata).
            rid=$(uuid)
            "$S3BENCH" put "${SRC_OF[$mib]}" "$b" "$rid" 2>"$WORK/s3bench.err" ||
                { cat "$WORK/s3bench.err" >&2; die "s3bench put of the read object failed"; }
            # Each run starts one system further down the list.
            for ((k = 0; k < n; k++)); do
                s3_turn "${ORDER[(k + run - 1) % n]}" "$run" "$mib" "$b" "$rid"
            done
            s3_rm "$b" "$rid"
            rgw_gc
        done
        s3_rb "$b" || die "could not remove bucket $b"
    done
    s3_rss
    for mib in "${SIZES_MIB[@]}"; do rm -f "${SRC_OF[$mib]}"; done
    s3_listing
    rgw_gc
    s3_report >"$WORK/report.md"
}

s3_turn() { # system run MiB bucket read-key: one system's write and read
    local s=$1 run=$2 mib=$3 b=$4 rid=$5 bytes=$(($3 * 1048576)) src=${SRC_OF[$3]} wid check=0 mnt pid
    wid=$(uuid)
    ((run == 1 && mib == SIZES_MIB[0])) && check=1
    if [[ $s == sdk-direct-sums ]]; then
        CMD[$s]="bash -c 'md5sum SRC & sha512sum SRC & $S3BENCH put SRC BUCKET <uuid>; wait'   # under /usr/bin/time -f '%U %S %M'"
        warm_source "$src"
        with_sums "$src" "$S3BENCH" put "$src" "$b" "$wid"
        record_transfer write "$s" "$run" "$mib"
        [[ $(s3_size "$b" "$wid") -eq $bytes ]] || die "$s: $b/$wid does not have $bytes bytes after the write"
        s3_rm "$b" "$wid"
        return 0
    fi
    if [[ $s == sdk-direct ]]; then
        CMD[$s]="$S3BENCH put SRC BUCKET <uuid>; $S3BENCH get BUCKET <read-uuid>   # under /usr/bin/time -f '%U %S %M'"
        warm_source "$src"
        timed_cmd "$S3BENCH" put "$src" "$b" "$wid"
        record_transfer write "$s" "$run" "$mib"
        [[ $(s3_size "$b" "$wid") -eq $bytes ]] || die "$s: $b/$wid does not have $bytes bytes after the write"
        ((check)) && s3_verify "$s" write "$b" "$wid" "$src" "$bytes"
        s3_rm "$b" "$wid"
        drop_caches
        cat "$S3BENCH" >/dev/null # its own binary is not part of the read
        timed_cmd "$S3BENCH" get "$b" "$rid"
        record_transfer read "$s" "$run" "$mib"
        ((check)) && s3_verify "$s" read "$b" "$rid" "$src" "$bytes"
        return 0
    fi
    mnt="$WORK/mnt-$s-$run-$mib"
    s3_mount "$s" "$mnt" "$b"
    pid=$MOUNTED_PID
    fuse_write "$s" "$run" "$mib" "$DIR/$wid" "$pid" fsync wait_object "$b" "$wid" "$bytes"
    ((check)) && s3_verify "$s" write "$b" "$wid" "$src" "$bytes"
    fuse_read "$s" "$run" "$mib" "$DIR/$rid" "$pid"
    ((check)) && { cmp -s -n "$bytes" "$DIR/$rid" "$src" || die "$s: read: $DIR/$rid differs from the source data"; }
    unmount "$mnt"
    s3_rm "$b" "$wid"
}

s3_rss() { # the imagefs daemons' peak RSS during one write of RSS_MIB
    ((RSS_MIB > 0)) || return 0
    local s b mnt pid id bytes=$((RSS_MIB * 1048576)) src copies max=0 mib c0 c1 t0 t1 k
    for mib in "${SIZES_MIB[@]}"; do ((mib > max)) && max=$mib; done
    src=${SRC_OF[$max]}
    copies=$(((RSS_MIB + max - 1) / max))
    for s in imagefs imagefs-nosum; do
        [[ -n ${WANT[$s]:-} ]] || continue
        log "$s: one write of $RSS_MIB MiB (peak RSS)"
        b="$BUCKET_PREFIX-rss"
        s3_bucket "$b"
        mnt="$WORK/mnt-$s-rss"
        s3_mount "$s" "$mnt" "$b"
        pid=$MOUNTED_PID
        id=$(uuid)
        warm_source "$src"
        rss_begin "$pid"
        c0=$(cpu_ticks "$pid")
        t0=$EPOCHREALTIME
        # The largest source $copies times, cut at RSS_MIB (a cat that head
        # stops early is not an error).
        { for ((k = 0; k < copies; k++)); do cat "$src" 2>/dev/null || true; done; } | head -c "$bytes" |
            dd of="$DIR/$id" bs=4M iflag=fullblock conv=fsync 2>"$WORK/dd.log" ||
            { cat "$WORK/dd.log" >&2; die "$s: the $RSS_MIB MiB write failed"; }
        wait_object "$b" "$id" "$bytes"
        t1=$EPOCHREALTIME
        c1=$(cpu_ticks "$pid")
        rss_end "$pid"
        EL=$(elapsed "$t0" "$t1")
        record rss_write "$s" 1 "$(mbps "$bytes" "$EL")"
        record rss_write_cpu "$s" 1 "$(cpu_per_gib $((c1 - c0)) "$bytes")"
        record rss_mib "$s" 1 "$(awk -v k="$RSS_KB" 'BEGIN { print k / 1024 }')"
        log "  $s: $RSS_MIB MiB at $(mbps "$bytes" "$EL") MB/s, peak RSS $((RSS_KB / 1024)) MiB"
        unmount "$mnt"
        s3_rb "$b" || die "could not remove bucket $b"
        rgw_gc
    done
}

s3_listing() { # ls -l of LS_FILES objects, cold and warm, per system, against ListObjectsV2
    LS_SYSTEMS=()
    ((LS_FILES > 0)) || return 0
    local b="$BUCKET_PREFIX-ls" run s mnt pid t0 t1 cnt api label
    s3_bucket "$b"
    log "creating $LS_FILES objects of 1 KiB in bucket $b"
    "$S3BENCH" fill "$b" "$LS_FILES" 1024 2>"$WORK/s3bench.err" || { cat "$WORK/s3bench.err" >&2; die "s3bench fill failed"; }
    LS_SYSTEMS=(sdk-direct)
    if [[ -n ${WANT[imagefs]:-} ]]; then
        LS_SYSTEMS+=(imagefs)
        # A known mtime on every object, set through imagefs (kept in its metadata).
        mnt="$WORK/ls-imagefs-touch"
        s3_mount imagefs "$mnt" "$b"
        log "  touch -d @$LS_MTIME on every object through imagefs"
        find "$DIR" -maxdepth 1 -type f -print0 | xargs -0 -P 8 -n 50 touch -d "@$LS_MTIME" ||
            die "imagefs: touch -d of the listing objects failed"
        unmount "$mnt"
    fi
    if [[ -n ${WANT[rclone]:-} ]]; then LS_SYSTEMS+=(rclone); fi
    if [[ -n ${WANT[s3fs]:-} ]]; then LS_SYSTEMS+=(s3fs); fi
    for ((run = 1; run <= RUNS; run++)); do
        log "ls -l run $run/$RUNS"
        for s in "${LS_SYSTEMS[@]}"; do
            if [[ $s == sdk-direct ]]; then
                drop_caches
                cat "$S3BENCH" >/dev/null # its own binary is not part of the listing
                for label in cold warm; do
                    t0=$EPOCHREALTIME
                    cnt=$("$S3BENCH" list "$b" 2>"$WORK/s3bench.err") || { cat "$WORK/s3bench.err" >&2; die "s3bench list failed"; }
                    t1=$EPOCHREALTIME
                    [[ $cnt -eq $LS_FILES ]] || die "s3bench list $b counts $cnt objects, expected $LS_FILES"
                    record "ls_$label" "$s" "$run" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')"
                    api=$(sed -n 's/.* objects in \([0-9.]*\) s$/\1/p' "$WORK/s3bench.err")
                    record "ls_${label}_api" "$s" "$run" "$api"
                done
            else
                mnt="$WORK/ls-$s-$run"
                s3_mount "$s" "$mnt" "$b"
                pid=$MOUNTED_PID
                drop_caches # cold: a fresh mount and no cached inodes
                time_ls "$s" "$run" cold "$DIR" "$pid"
                time_ls "$s" "$run" warm "$DIR" "$pid"
                if [[ $s == imagefs ]]; then s3_check_mtimes "$run" "$DIR"; fi
                unmount "$mnt"
            fi
            log "  $s: cold $(values_of ls_cold "$s" '%.3f' | awk -F' / ' '{ print $NF }') s, warm $(values_of ls_warm "$s" '%.3f' | awk -F' / ' '{ print $NF }') s"
        done
    done
    s3_rb "$b" || die "could not remove bucket $b"
}

s3_check_mtimes() { # run dir: every object shows the stored mtime (stat), and rsync -a keeps it (run 1, 20 files)
    local run=$1 dir=$2 bad dst
    bad=$(find "$dir" -maxdepth 1 -type f -printf '%T@\n' | awk -v t="$LS_MTIME" '$1 + 0 != t' | wc -l)
    MTIME_CHECK="stat: $((LS_FILES - bad)) of $LS_FILES objects show mtime @$LS_MTIME"
    ((bad == 0)) || note "imagefs, ls run $run: $bad of $LS_FILES objects do not show the mtime set with touch -d @$LS_MTIME"
    ((run == 1)) || return 0
    dst="$WORK/rsync-check"
    mkdir -p "$dst"
    # (sed, not head: with pipefail, find stopped by SIGPIPE would fail the pipeline; ids have no blanks)
    find "$dir" -maxdepth 1 -type f -printf '%f\n' | sed -n '1,20p' | xargs -I{} rsync -a "$dir/{}" "$dst/" ||
        die "imagefs: rsync -a of listing objects failed"
    bad=$(find "$dst" -type f -printf '%T@\n' | awk -v t="$LS_MTIME" '$1 + 0 != t' | wc -l)
    RSYNC_CHECK="rsync -a of 20 objects to a local directory: $((20 - bad)) of 20 copies have mtime @$LS_MTIME"
    ((bad == 0)) || note "imagefs: rsync -a copies of $bad of 20 objects lost the stored mtime"
    rm -rf "$dst"
}

s3_report() {
    daemon_errors
    declare -A LABEL=(
        [sdk-direct]="SDK direct (examples/s3bench)"
        [sdk-direct-sums]="SDK direct + md5sum + sha512sum"
        [imagefs]="imagefs (s3 store)"
        [imagefs-nosum]="imagefs (s3 store), checksums = false"
        [rclone]="rclone mount, --vfs-cache-mode off"
        [s3fs]="s3fs"
    )
    local s mib size_txt rgw_ver="-" sizes_txt cold warm w r ref
    if ((RGW_LOCAL)); then rgw_ver=$(radosgw --version 2>/dev/null | head -1 || echo "?"); fi
    sizes_txt=$(printf '%s MiB, ' "${SIZES_MIB[@]}")

    echo
    echo "## S3 store: sequential I/O, RSS and listing, $(date -u '+%F %H:%M UTC')"
    echo
    host_facts
    echo "- S3 server: $S3_ENDPOINT ($([[ $RGW_LOCAL -eq 1 ]] && echo "Ceph RGW, $rgw_ver, on the cluster of $CEPH_CONF_FILE" || echo "from $S3_ENV_FILE")), path style; one bucket per run"
    echo "- Source data read from $SRCDIR$([[ $SRCDIR == /dev/shm ]] && echo ' (tmpfs, RAM)')"
    imagefs_facts
    echo "- sdk-direct: $S3BENCH (examples/s3bench.rs: the S3 store's own SDK client; put = multipart, 10 MiB parts, 6 in"
    echo "  flight, as imagefs's defaults; get = 4 MiB ranged GETs, 8 in flight, as imagefs's read-ahead at its widest)"
    echo "- rclone: $(rclone version 2>/dev/null | sed -n 1p) (provider Ceph, its defaults: 5 MiB parts, 4 in flight); s3fs: $(s3fs --version 2>/dev/null | awk 'NR == 1 { print $(NF-3) }') ($(dpkg-query -W -f '${Version}' s3fs 2>/dev/null || echo "?"), its defaults)"
    echo "- Sizes ${sizes_txt%, }, $RUNS run(s), medians. MB/s = 10^6 bytes/s. CPU = the daemon's utime+stime (/proc/PID/stat,"
    echo "  CLK_TCK $CLK_TCK) over the transfer, per GiB; for s3bench its own user+sys (/usr/bin/time). Peak RSS = the daemon's"
    echo "  VmHWM after the write (a fresh mount for each write+read), or the max of VmRSS sampled every 0.1 s if larger;"
    echo "  for s3bench its maxrss."
    echo
    echo "| system | size | write MB/s | vs SDK | CPU s/GiB | peak RSS MiB | read MB/s | vs SDK | CPU s/GiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for mib in "${SIZES_MIB[@]}"; do
        size_txt=$(awk -v m="$mib" 'BEGIN { if (m % 1024) print m " MiB"; else print m / 1024 " GiB" }')
        for s in "${ORDER[@]}"; do
            printf '| %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" "$size_txt" \
                "$(median_cells "write:$mib" "$s")" "$(fmt '%.0f' "$(median_of "write_rss:$mib" "$s")")" "$(median_cells "read:$mib" "$s")"
        done
    done
    echo
    sums_table sdk-direct-sums
    if [[ -n ${WANT[rclone]:-}${WANT[s3fs]:-} ]]; then
        echo "Ratios of the medians, imagefs (and imagefs with checksums = false) against the others:"
        echo
        echo "| | size | write vs SDK | vs rclone | vs s3fs | read vs SDK | vs rclone | vs s3fs |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for s in imagefs imagefs-nosum; do
            [[ -n ${WANT[$s]:-} ]] || continue
            for mib in "${SIZES_MIB[@]}"; do
                w=$(median_of "write:$mib" "$s") r=$(median_of "read:$mib" "$s")
                printf '| %s | %s |' "${LABEL[$s]}" "$(awk -v m="$mib" 'BEGIN { if (m % 1024) print m " MiB"; else print m / 1024 " GiB" }')"
                for ref in sdk-direct rclone s3fs; do printf ' %s |' "$(ratio "$w" "$(median_of "write:$mib" "$ref")")"; done
                for ref in sdk-direct rclone s3fs; do printf ' %s |' "$(ratio "$r" "$(median_of "read:$mib" "$ref")")"; done
                echo
            done
        done
        echo
    fi
    echo "Write: through the mounts \`dd bs=4M conv=fsync\`, timed until dd returned and a HEAD (s3bench head, polled every"
    echo "0.05 s) shows the object at full size; imagefs commits at fsync (CompleteMultipartUpload, then a CopyObject onto"
    echo "itself that adds the checksums). sdk-direct: \`s3bench put\` until CompleteMultipartUpload returned. Read: after"
    echo "dropping the kernel's caches$([[ $RGW_LOCAL -eq 1 ]] && echo " and the OSD's (\`ceph tell osd.* cache drop\`)"), the whole object of this run and size,"
    echo "written beforehand by \`s3bench put\` (multipart, no imagefs metadata, as a Glance upload). Every write's object was"
    echo "checked by HEAD afterwards and deleted; in run 1 the ${SIZES_MIB[0]} MiB writes and reads were compared with the source."
    echo
    if ((RSS_MIB > 0)) && wants_imagefs; then
        echo "### Daemon peak RSS during one $RSS_MIB MiB write"
        echo
        echo "| system | peak RSS MiB | MB/s | CPU s/GiB |"
        echo "|---|---:|---:|---:|"
        for s in imagefs imagefs-nosum; do
            [[ -n ${WANT[$s]:-} ]] || continue
            printf '| %s | %s | %s | %s |\n' "${LABEL[$s]}" "$(fmt '%.0f' "$(median_of rss_mib "$s")")" \
                "$(fmt '%.0f' "$(median_of rss_write "$s")")" "$(fmt '%.2f' "$(median_of rss_write_cpu "$s")")"
        done
        echo
        echo "One write each (not repeated), of the largest source repeated through a pipe (\`cat SRC ... | head -c"
        echo "$((RSS_MIB * 1048576)) | dd bs=4M iflag=fullblock conv=fsync\`), so its MB/s is not comparable with the table above."
        echo
    fi
    if ((${#LS_SYSTEMS[@]} > 0)); then
        echo "### \`ls -l\` of $LS_FILES objects of 1 KiB (seconds, median of $RUNS)"
        echo
        echo "Cold = caches dropped and, for FUSE, a fresh mount; warm = the same command again right after. sdk-direct ="
        echo "\`s3bench list\` (ListObjectsV2, every page, $(((LS_FILES + 999) / 1000)) pages), the whole process; in brackets the time of the"
        echo "ListObjectsV2 calls alone (client built). \"vs direct\" is against the whole process."
        echo
        echo "| system | cold s | vs direct | warm s | vs direct | daemon CPU s, cold |"
        echo "|---|---:|---:|---:|---:|---:|"
        cold=$(median_of ls_cold sdk-direct) warm=$(median_of ls_warm sdk-direct)
        for s in "${LS_SYSTEMS[@]}"; do
            if [[ $s == sdk-direct ]]; then
                printf '| %s | %s (%s) | 1.00x | %s (%s) | 1.00x | n/a |\n' "s3bench list (ListObjectsV2)" \
                    "$(fmt '%.3f' "$cold")" "$(fmt '%.3f' "$(median_of ls_cold_api "$s")")" \
                    "$(fmt '%.3f' "$warm")" "$(fmt '%.3f' "$(median_of ls_warm_api "$s")")"
                continue
            fi
            printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" \
                "$(fmt '%.3f' "$(median_of ls_cold "$s")")" "$(ratio "$(median_of ls_cold "$s")" "$cold")" \
                "$(fmt '%.3f' "$(median_of ls_warm "$s")")" "$(ratio "$(median_of ls_warm "$s")" "$warm")" \
                "$(fmt '%.2f' "$(median_of ls_cold_cpu "$s")")"
        done
        echo
        if [[ -n ${MTIME_CHECK:-} ]]; then
            echo "The objects were given mtime @$LS_MTIME through imagefs (\`touch -d\`) before the runs; after each fresh mount"
            echo "(last run) $MTIME_CHECK; ${RSYNC_CHECK:-rsync not checked}. rclone and s3fs show the objects'"
            echo "LastModified (they keep mtimes in their own metadata keys)."
            echo
        fi
    fi
    if ((DAEMON_ERRORS > 0)); then
        echo "The imagefs daemons logged $DAEMON_ERRORS ERROR/WARN lines during this benchmark."
        echo
    fi
    for s in "${NOTES[@]}"; do echo "- Note: $s"; done
    ((${#NOTES[@]} == 0)) || echo
    echo "Per run (MB/s, in run order; run N starts with the Nth system of the table):"
    echo
    for mib in "${SIZES_MIB[@]}"; do
        for s in "${ORDER[@]}"; do
            echo "- ${LABEL[$s]}, $mib MiB: write $(values_of "write:$mib" "$s" '%.0f') (CPU s/GiB $(values_of "write_cpu:$mib" "$s" '%.2f'); RSS MiB $(values_of "write_rss:$mib" "$s" '%.0f')); read $(values_of "read:$mib" "$s" '%.0f') (CPU s/GiB $(values_of "read_cpu:$mib" "$s" '%.2f'))"
        done
    done
    if ((${#LS_SYSTEMS[@]} > 0)); then
        for s in "${LS_SYSTEMS[@]}"; do
            echo "- ls -l, ${LABEL[$s]}: cold $(values_of ls_cold "$s" '%.3f') s; warm $(values_of ls_warm "$s" '%.3f') s"
        done
    fi
    echo
    echo "### Commands"
    echo
    echo '```sh'
    echo "# $0 s3 --sizes-mib $(IFS=,; echo "${SIZES_MIB[*]}") --runs $RUNS --systems $SYSTEMS --rss-mib $RSS_MIB --ls-files $LS_FILES --s3-env $S3_ENV_FILE"
    echo "# S3_ENDPOINT=$S3_ENDPOINT, S3_ACCESS_KEY and S3_SECRET_KEY from $S3_ENV_FILE"
    echo "head -c BYTES /dev/urandom > $SRCDIR/imagefs-bench-src.PID.MIB; cat SRC > /dev/null   # before each write"
    echo "$S3BENCH mb BUCKET   # one per run; removed with s3bench rb BUCKET"
    echo "$S3BENCH put SRC BUCKET <read-uuid>   # each run and size: the object every system reads"
    echo "# drop caches (before every read):"
    echo "sync; echo 3 > /proc/sys/vm/drop_caches$([[ $RGW_LOCAL -eq 1 ]] && echo "; ceph tell 'osd.*' cache drop")"
    for s in "${ORDER[@]}"; do
        [[ -n ${CMD[$s]:-} ]] && echo "${CMD[$s]}"
    done
    echo "# $RCLONE_CONF (mode 0600): [rgw] type = s3, provider = Ceph, endpoint = $S3_ENDPOINT, access_key_id, secret_access_key"
    echo "# $S3FS_PASSWD (mode 0600): ACCESS:SECRET"
    echo "# through a mount (DIR = MNT/$S3_STORE for imagefs, MNT otherwise): write, read"
    echo "dd if=SRC of=DIR/<uuid> bs=4M conv=fsync; until [ \"\$(s3bench head BUCKET <uuid>)\" = BYTES ]; do sleep 0.05; done"
    echo "dd if=DIR/<read-uuid> of=/dev/null bs=4M"
    echo "# after each turn: fusermount3 -u MNT (the daemon is waited for by PID); s3bench rm BUCKET <uuid>"
    if ((RGW_LOCAL)); then echo "radosgw-admin gc process --include-all   # after each size: reclaim the deleted objects' space"; fi
    if ((${#LS_SYSTEMS[@]} > 0)); then
        echo "# listing: $S3BENCH fill BUCKET $LS_FILES 1024; through imagefs: find DIR -type f | xargs touch -d @$LS_MTIME; remount; then"
        echo "sync; echo 3 > /proc/sys/vm/drop_caches; LC_ALL=C ls -l DIR > FILE   # cold (fresh mount)"
        echo "LC_ALL=C ls -l DIR > FILE                                              # warm"
        echo "$S3BENCH list BUCKET   # direct, twice"
    fi
    echo '```'
}

# ================================================================ run
case $SUITE in
    file) suite_file ;;
    rbd) suite_rbd ;;
    s3) suite_s3 ;;
esac
cat "$WORK/report.md" >>"$OUT"
cat "$WORK/report.md"
log "appended to $OUT"

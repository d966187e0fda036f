#!/usr/bin/env bash
# Side-by-side benchmarks of imagefs against what users would use instead.
#
#   scripts/bench.sh file [--size-gib 4 | --size-mib N] [--runs 3]
#                         [--out BENCHMARKS.md] [--binary target/release/imagefs]
#                         [--workdir /var/tmp] [--ls-files 10000]
#                         [--systems raw,imagefs,rclone-off,rclone-writes] [--keep]
#   (--systems may also name imagefs-nosum: imagefs with [mount] checksums = false)
#
# Suite `file` (the only one so far): sequential write and read of SIZE through
#   raw            a plain directory on the disk (the baseline)
#   imagefs        `imagefs mount` of a file store whose datadir is that directory
#   rclone-off     `rclone mount DIR MNT --vfs-cache-mode off`
#   rclone-writes  `rclone mount DIR MNT --vfs-cache-mode writes`
#   imagefs-nosum  (opt-in) imagefs with `[mount] checksums = false`
# all in one run, RUNS times, then `ls -l` of LS_FILES small files (cold and
# warm). Medians, ratios vs the raw directory and the daemons' CPU seconds per
# GiB (utime+stime from /proc/PID/stat) are written as a markdown section
# appended to OUT.
#
# A write is timed from the start of `dd ... conv=fsync` until the data is in
# the datadir at full size and `sync FILE` on it has returned; for every system
# but rclone-writes that last step costs nothing (dd's fsync already did it),
# for rclone-writes it includes the VFS write-back (upload after close). The
# time until dd itself returned is reported too ("dd only").
# Reads: `sync; echo 3 > /proc/sys/vm/drop_caches` then `dd of=/dev/null bs=1M`
# of one file created in the datadir before anything is mounted.
#
# Needs root (drop_caches, FUSE), fusermount3, rclone, python3. Every mount and
# daemon it starts is stopped by mountpoint and PID on exit, also on failure.
set -Eeuo pipefail

# ---------------------------------------------------------------- options
SUITE=""
SIZE_MIB=$((4 * 1024))
RUNS=3
OUT="BENCHMARKS.md"
BINARY="target/release/imagefs"
WORKDIR_PARENT="/var/tmp"
LS_FILES=10000
SYSTEMS="raw,imagefs,rclone-off,rclone-writes"
KEEP=0

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}
die() { echo "bench: error: $*" >&2; exit 1; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ $# -ge 1 ]] || usage
case "$1" in
    file) SUITE=file; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown suite '$1' (known: file)" ;;
esac
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size-gib) SIZE_MIB=$(awk -v g="$2" 'BEGIN{ printf "%d", g * 1024 }'); shift 2 ;;
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        --workdir) WORKDIR_PARENT=$2; shift 2 ;;
        --ls-files) LS_FILES=$2; shift 2 ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown option '$1'" ;;
    esac
done
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -gt 0 ]] || die "size must be a positive number of MiB"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] || die "--runs must be a positive integer"
[[ $LS_FILES =~ ^[0-9]+$ ]] || die "--ls-files must be an integer (0 skips the listing test)"

declare -A WANT=()
IFS=, read -r -a _systems <<<"$SYSTEMS"
for s in "${_systems[@]}"; do
    case "$s" in
        raw|imagefs|imagefs-nosum|rclone-off|rclone-writes) WANT[$s]=1 ;;
        *) die "unknown system '$s'" ;;
    esac
done
WANT[raw]=1 # the baseline every ratio is computed against
ORDER=()
for s in raw imagefs imagefs-nosum rclone-off rclone-writes; do
    if [[ -n ${WANT[$s]:-} ]]; then ORDER+=("$s"); fi
done

# ---------------------------------------------------------------- prerequisites
[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches, FUSE mounts)"
[[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable"
command -v fusermount3 >/dev/null || die "fusermount3 not found (package fuse3)"
command -v python3 >/dev/null || die "python3 not found"
if [[ -n ${WANT[rclone-off]:-}${WANT[rclone-writes]:-} ]]; then
    command -v rclone >/dev/null || die "rclone not found"
fi
if [[ -n ${WANT[imagefs]:-}${WANT[imagefs-nosum]:-} ]]; then
    [[ -x $BINARY ]] || die "imagefs binary '$BINARY' not found (build it or pass --binary)"
    BINARY=$(readlink -f "$BINARY")
fi
[[ -d $WORKDIR_PARENT ]] || die "--workdir $WORKDIR_PARENT is not a directory"
[[ $WORKDIR_PARENT != *[[:space:]]* ]] || die "--workdir must not contain whitespace"

CLK_TCK=$(getconf CLK_TCK)
SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
SIZE_GIB=$(awk -v m="$SIZE_MIB" 'BEGIN{ printf "%.4g", m / 1024 }')
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

# ---------------------------------------------------------------- cleanup
WORK=""
SRC=""
MOUNTS=()       # mountpoints we mounted, in order
declare -A MOUNT_PID=()   # mountpoint -> daemon pid
declare -A PID_COMM=()    # pid -> "child" (our own child: its pid cannot be reused
                          # before we reap it) or the /proc/PID/comm it had when
                          # we learnt it (a detached daemon: never signal a reused pid)

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

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do unmount "${MOUNTS[i]}"; done
    for i in "${!PID_COMM[@]}"; do stop_pid "$i"; done
    [[ -n $SRC && -f $SRC ]] && rm -f "$SRC"
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

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

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

# ---------------------------------------------------------------- mounts
declare -A CMD=() # system -> exact mount command line (for the report)

# Mount functions leave the daemon's pid in MOUNTED_PID (not printed: a command
# substitution would run them in a subshell and lose the cleanup bookkeeping).
MOUNTED_PID=""

mount_imagefs() { # system (imagefs|imagefs-nosum) datadir mountpoint
    local sys=$1 data=$2 mnt=$3 conf pidf pid extra=""
    if [[ $sys == imagefs-nosum ]]; then extra=$'[mount]\nchecksums = false\n'; fi
    mkdir -p "$mnt"
    conf="$WORK/imagefs-$(basename "$mnt").toml"
    pidf="$WORK/imagefs-$(basename "$mnt").pid"
    printf '%s[stores.local]\ntype = "file"\ndatadir = "%s"\n' "$extra" "$data" >"$conf"
    rm -f "$pidf"
    [[ -n ${CMD[$sys]:-} ]] || CMD[$sys]="$BINARY mount $mnt --config $conf --pid-file $pidf   # $conf: $(tr '\n' ' ' <"$conf")"
    if ! timeout 60 "$BINARY" mount "$mnt" --config "$conf" --pid-file "$pidf" \
        --log-file "$WORK/imagefs-$(basename "$mnt").daemon.log" >"$WORK/imagefs-$(basename "$mnt").log" 2>&1; then
        cat "$WORK/imagefs-$(basename "$mnt").log" >&2
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

mount_rclone() { # datadir mountpoint cache-mode: rclone in the background
    local data=$1 mnt=$2 mode=$3 pid
    mkdir -p "$mnt"
    # rclone runs in the foreground as our background child (rather than with
    # --daemon, which forks) so that we know its PID for CPU accounting and cleanup.
    # --allow-non-empty is not needed: every mountpoint is a fresh empty directory.
    local args=(mount "$data" "$mnt" --vfs-cache-mode "$mode"
        --cache-dir "$WORK/rclone-cache-$mode" --config /dev/null)
    [[ -n ${CMD[rclone-$mode]:-} ]] || CMD[rclone-$mode]="rclone ${args[*]} &"
    rclone "${args[@]}" --log-file "$WORK/rclone-$(basename "$mnt").log" </dev/null >/dev/null 2>&1 &
    pid=$!
    PID_COMM[$pid]=child
    MOUNT_PID[$mnt]=$pid
    MOUNTS+=("$mnt")
    wait_mounted "$mnt" "$pid" 30 || { cat "$WORK/rclone-$(basename "$mnt").log" >&2; die "rclone mount $mnt did not show up in /proc/mounts"; }
    MOUNTED_PID=$pid
}

# ---------------------------------------------------------------- setup
WORK=$(mktemp -d "$WORKDIR_PARENT/imagefs-bench.XXXXXX")
: >"$WORK/results.tsv"
DATA="$WORK/data"
mkdir -p "$DATA"

need_disk=$(((SIZE_MIB * 3 + 1024) * 1024)) # KiB: read file + one written file + rclone's write cache
avail_disk=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
((avail_disk > need_disk)) || die "need $((need_disk >> 20)) GiB free in $WORKDIR_PARENT, have $((avail_disk >> 20)) GiB"

avail_shm=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || echo 0)
if ((${avail_shm:-0} > SIZE_MIB * 1024 + 512 * 1024)); then SRCDIR=/dev/shm; else SRCDIR=/tmp; fi
SRC="$SRCDIR/imagefs-bench-src.$$"
log "source: $SIZE_MIB MiB of random data in $SRC"
head -c "$SIZE_BYTES" /dev/urandom >"$SRC"

READ_ID=$(uuid)
log "read file: $DATA/$READ_ID"
dd if="$SRC" of="$DATA/$READ_ID" bs=1M conv=fsync status=none

declare -A MNT=() PID=() TARGET=()
TARGET[raw]=$DATA
PID[raw]=""
for s in imagefs imagefs-nosum; do
    [[ -n ${WANT[$s]:-} ]] || continue
    MNT[$s]="$WORK/mnt-$s"
    mount_imagefs "$s" "$DATA" "${MNT[$s]}"
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

# ---------------------------------------------------------------- transfers
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
cpu_per_gib() { awk -v t="$1" -v hz="$CLK_TCK" -v b="$2" 'BEGIN { printf "%.3f", t / hz / (b / 1073741824) }'; }

bench_write() { # system run
    local s=$1 run=$2 id t0 t1 t2 c0 c1 size
    id=$(uuid)
    drop_caches
    c0=$(cpu_ticks "${PID[$s]}")
    t0=$EPOCHREALTIME
    dd if="$SRC" of="${TARGET[$s]}/$id" bs=1M conv=fsync 2>"$WORK/dd.log" || { cat "$WORK/dd.log" >&2; die "$s: write failed"; }
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
    el=$(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }')
    dd_el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    record write "$s" "$run" "$(mbps "$SIZE_BYTES" "$el")"
    record write_dd "$s" "$run" "$(mbps "$SIZE_BYTES" "$dd_el")"
    [[ -n ${PID[$s]} ]] && record write_cpu "$s" "$run" "$(cpu_per_gib $((c1 - c0)) "$SIZE_BYTES")"
    # Content check (not timed): what landed in the datadir is what was written.
    cmp -s "$SRC" "$DATA/$id" || die "$s: $DATA/$id differs from the source data"
    log "  $s write: $(mbps "$SIZE_BYTES" "$el") MB/s (dd only $(mbps "$SIZE_BYTES" "$dd_el") MB/s), daemon $((c1 - c0)) ticks"
    rm -f "$DATA/$id"
}

bench_read() { # system run
    local s=$1 run=$2 t0 t1 c0 c1 bytes
    drop_caches
    c0=$(cpu_ticks "${PID[$s]}")
    t0=$EPOCHREALTIME
    dd if="${TARGET[$s]}/$READ_ID" of=/dev/null bs=1M 2>"$WORK/dd.log" || { cat "$WORK/dd.log" >&2; die "$s: read failed"; }
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "${PID[$s]}")
    bytes=$(awk '/bytes/ { print $1; exit }' "$WORK/dd.log")
    [[ $bytes -eq $SIZE_BYTES ]] || die "$s: read $bytes bytes, expected $SIZE_BYTES"
    local el
    el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    record read "$s" "$run" "$(mbps "$SIZE_BYTES" "$el")"
    [[ -n ${PID[$s]} ]] && record read_cpu "$s" "$run" "$(cpu_per_gib $((c1 - c0)) "$SIZE_BYTES")"
    log "  $s read: $(mbps "$SIZE_BYTES" "$el") MB/s, daemon $((c1 - c0)) ticks"
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run/$RUNS ($SIZE_MIB MiB)"
    # Each run starts one system further down the list, so that no system is
    # always measured first (right after the source file was written, say).
    n=${#ORDER[@]}
    for ((k = 0; k < n; k++)); do
        s=${ORDER[(k + run - 1) % n]}
        bench_write "$s" "$run"
        bench_read "$s" "$run"
    done
done
# Content check of reads (not timed): each system returns the bytes of the file.
for s in "${ORDER[@]}"; do
    cmp -s "$SRC" "${TARGET[$s]}/$READ_ID" || die "$s: reading ${TARGET[$s]}/$READ_ID returns other data than was stored"
done

for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do unmount "${MOUNTS[i]}"; done
rm -f "$SRC"
rm -rf "$DATA"

# ---------------------------------------------------------------- ls -l
LS_SYSTEMS=()
if ((LS_FILES > 0)); then
    LSDATA="$WORK/lsdata"
    mkdir -p "$LSDATA"
    log "creating $LS_FILES files of 1 KiB in $LSDATA"
    python3 - "$LSDATA" "$LS_FILES" <<'EOF'
import os, sys, uuid
d, n = sys.argv[1], int(sys.argv[2])
blob = os.urandom(1024)
for _ in range(n):
    with open(os.path.join(d, str(uuid.uuid4())), "wb") as f:
        f.write(blob)
EOF
    sync

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

    LS_SYSTEMS=(raw)
    if [[ -n ${WANT[imagefs]:-} ]]; then LS_SYSTEMS+=(imagefs); fi
    if [[ -n ${WANT[rclone-off]:-}${WANT[rclone-writes]:-} ]]; then LS_SYSTEMS+=(rclone); fi
    for ((run = 1; run <= RUNS; run++)); do
        log "ls -l run $run/$RUNS"
        for s in "${LS_SYSTEMS[@]}"; do
            dir=$LSDATA pid="" mnt=""
            case $s in
                imagefs) mnt="$WORK/ls-imagefs-$run"; mount_imagefs imagefs "$LSDATA" "$mnt"; pid=$MOUNTED_PID; dir="$mnt/local" ;;
                rclone) mnt="$WORK/ls-rclone-$run"; mount_rclone "$LSDATA" "$mnt" off; pid=$MOUNTED_PID; dir=$mnt ;;
            esac
            drop_caches # cold: fresh mount (for the FUSE systems) and no cached inodes
            time_ls "$s" "$run" cold "$dir" "$pid"
            time_ls "$s" "$run" warm "$dir" "$pid"
            if [[ -n $mnt ]]; then unmount "$mnt"; fi
            log "  $s: cold $(values_of ls_cold "$s" '%.3f' | awk -F' / ' '{ print $NF }') s, warm $(values_of ls_warm "$s" '%.3f' | awk -F' / ' '{ print $NF }') s"
        done
    done
fi

# ---------------------------------------------------------------- report
# Errors the imagefs daemons logged (with the mount's default log level).
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
declare -A LABEL=(
    [raw]="raw directory"
    [imagefs]="imagefs (file store)"
    [imagefs-nosum]="imagefs (file store), checksums = false"
    [rclone-off]="rclone mount, --vfs-cache-mode off"
    [rclone-writes]="rclone mount, --vfs-cache-mode writes"
    [rclone]="rclone mount, --vfs-cache-mode off"
)

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
disk=$(df -PT "$WORKDIR_PARENT" | awk 'NR == 2 { print $1 " (" $2 ")" }')
imagefs_ver="-"
if [[ -n ${WANT[imagefs]:-}${WANT[imagefs-nosum]:-} ]]; then
    imagefs_ver="$BINARY ($("$BINARY" --version 2>/dev/null | head -1 || true); built $(date -u -r "$BINARY" '+%F %T UTC'))"
fi
rclone_ver=$(rclone version 2>/dev/null | head -1 || echo "-")
git_rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git_dirty=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (dirty)" || true)

{
    echo
    echo "## File store: sequential I/O and listing, $(date -u '+%F %H:%M UTC')"
    echo
    echo "- Host: kernel $(uname -r), $cpu_model x $(nproc), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- Disk: $disk, directory $WORKDIR_PARENT; source data read from $SRCDIR$([[ $SRCDIR == /dev/shm ]] && echo ' (tmpfs, RAM)')"
    echo "- imagefs: $imagefs_ver, repository at $git_rev$git_dirty"
    echo "- rclone: $rclone_ver"
    echo "- $SIZE_GIB GiB per transfer, $RUNS run(s), medians. MB/s = 10^6 bytes/s. CPU = the daemon's utime+stime"
    echo "  (/proc/PID/stat, CLK_TCK $CLK_TCK) per GiB transferred; the raw directory has no daemon."
    echo
    echo "| system | write MB/s | vs raw | CPU s/GiB | read MB/s | vs raw | CPU s/GiB | write, dd only MB/s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    rw=$(median_of write raw) rr=$(median_of read raw)
    for s in "${ORDER[@]}"; do
        w=$(median_of write "$s") r=$(median_of read "$s")
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$s]}" \
            "$(fmt '%.0f' "$w")" "$(ratio "$w" "$rw")" "$(fmt '%.2f' "$(median_of write_cpu "$s")")" \
            "$(fmt '%.0f' "$r")" "$(ratio "$r" "$rr")" "$(fmt '%.2f' "$(median_of read_cpu "$s")")" \
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
    echo "head -c $SIZE_BYTES /dev/urandom > $SRCDIR/imagefs-bench-src.PID"
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
} >"$WORK/report.md"

cat "$WORK/report.md" >>"$OUT"
cat "$WORK/report.md"
log "appended to $OUT"

#!/usr/bin/env bash
# imagefs FUSE test harness: mounts the real release binary on stores of one
# type and drives real tools (cp, dd, rsync, mv, qemu-img, python, fsx,
# pjdfstest, ...) against it. See fuse-tests/README.md.
#
#   fuse-tests/run.sh [--store-type file] [--binary PATH] [--quick] [--keep]
#                     [--list] [TEST ...]
#
#   --store-type T  store type to test (default file; see backend_file_* below)
#   --binary PATH   imagefs binary (default $CARGO_TARGET_DIR/release/imagefs,
#                   else <repo>/target/release/imagefs)
#   --quick         smaller data and fewer fsx ops (a smoke run, not the suite)
#   --keep          keep the state directory (data, backends, logs)
#   --list          list the tests and exit
#   --skip TEST     do not run TEST (repeatable); it is not counted
#   TEST ...        run only these tests (names as printed by --list)
#
# Prints one line per test and ends with exactly `N passed, N failed`; exits
# non-zero if any test failed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
export PATH="${IMAGEFS_TOOLS:-$HERE/.tools}/bin:$PATH"

# Every test, in the order they run. kill9_gc remounts, so it runs late.
ALL_TESTS=(
    root_lists_stores
    cp_cmp
    dd_bs1m
    rsync_twice
    mv_between_stores
    qemu_img
    hashes_xattrs
    hashes_after_overwrite
    glance_thin_write
    commit_at_close
    dup_close_fsync_write
    write_while_reading
    read_beside_writer
    backend_image_visible
    exclusive_create
    times_stable_after_create
    unlink_while_open
    read_then_rm
    rm_while_reading
    rename_while_open
    reuse_name_while_open
    name_max
    errno_mkdir
    errno_symlink
    errno_link_mkfifo
    concurrent_readers
    big_write_memory
    fsx
    pjdfstest
    store_mount
    two_mounts
    unlink_elsewhere_while_reading
    glance_config_mount
    ro_mount
    sigterm
    check_cmd
    rbd_clone_cp
    backend_outage
    kill9_gc
)

# ---------------------------------------------------------------------------
# Backends. A store type T plugs in by defining these functions:
#   backend_T_setup                 prepare the backend (once, before mounting)
#   backend_T_config_section NAME   print the `[stores.NAME]` TOML section
#   backend_T_cat NAME ID           print the committed object's bytes
#   backend_T_exists NAME ID        exit 0 iff the committed object exists
#   backend_T_leftovers NAME        list what unfinished uploads left (one/line)
#   backend_T_put NAME ID FILE      store FILE as ID the way Glance's driver does
#   backend_T_location NAME ID      print the expected user.imagefs.location
#   backend_T_mode NAME ID          print the octal mode the backend keeps (or -)
#   backend_T_teardown              remove what setup made
#   backend_T_reclaim               (optional) free the space of deleted objects now
#   backend_T_trash NAME            (optional) list what deleted images wait for
#   backend_T_server_pids           (optional) PIDs of the server daemons that hold
#                                   the data (frozen with SIGSTOP to make an outage)
# Tests only talk to the backend through `backend OP ARGS...`.
# ---------------------------------------------------------------------------
backend() { local op=$1; shift; "backend_${STORE_TYPE}_$op" "$@"; }

backend_file_datadir() { echo "$STATE/backend/$1"; }
backend_file_setup() {
    local s
    for s in "${STORES[@]}"; do mkdir -p "$(backend_file_datadir "$s")"; done
}
backend_file_config_section() {
    printf '[stores.%s]\ntype = "file"\ndatadir = "%s"\n\n' "$1" "$(backend_file_datadir "$1")"
}
backend_file_cat() { cat "$(backend_file_datadir "$1")/$2"; }
backend_file_exists() { [ -f "$(backend_file_datadir "$1")/$2" ]; }
backend_file_leftovers() {
    (cd "$(backend_file_datadir "$1")" && ls -A | grep '^\.imagefs-tmp-' || true)
}
backend_file_put() {
    # Glance's filesystem driver: open(path, 'wb') on the final name, then chmod.
    cp "$3" "$(backend_file_datadir "$1")/$2" && chmod 0640 "$(backend_file_datadir "$1")/$2"
}
backend_file_location() { echo "file://$(backend_file_datadir "$1")/$2"; }
backend_file_mode() { stat -c %a "$(backend_file_datadir "$1")/$2"; }
backend_file_teardown() { rm -rf "$STATE/backend"; }

# rbd: one pool per store (fusetest-a, fusetest-b) on the cluster of
# scripts/ceph.sh (started by the caller; a cluster that is down fails
# setup). Checked with Ceph's own `rbd` CLI, never through the mount.
CEPH_CONF_FILE="${IMAGEFS_STATE:-/var/tmp/imagefs-backends}/ceph/ceph.conf"
rbd_() { timeout 120 rbd -c "$CEPH_CONF_FILE" "$@"; }
ceph_() { timeout 60 ceph -c "$CEPH_CONF_FILE" "$@"; }
# one pool per store and run, so runs side by side never share one
backend_rbd_pool() { echo "fusetest-${STATE##*.}-$1"; }
backend_rbd_setup() {
    [ -f "$CEPH_CONF_FILE" ] || { echo "no Ceph cluster: $CEPH_CONF_FILE (bash scripts/ceph.sh up)" >&2; return 1; }
    ceph_ config set mon mon_allow_pool_delete true >/dev/null || return 1
    local s p
    for s in "${STORES[@]}"; do
        p=$(backend_rbd_pool "$s")
        ceph_ osd pool rm "$p" "$p" --yes-i-really-really-mean-it >/dev/null 2>&1
        ceph_ osd pool create "$p" 8 8 >/dev/null || return 1
        rbd_ pool init "$p" || return 1
    done
}
backend_rbd_config_section() {
    printf '[stores.%s]\ntype = "rbd"\npool = "%s"\nceph_conf = "%s"\n\n' \
        "$1" "$(backend_rbd_pool "$1")" "$CEPH_CONF_FILE"
}
backend_rbd_cat() { rbd_ export --no-progress "$(backend_rbd_pool "$1")/$2@snap" - 2>/dev/null; }
backend_rbd_committed() { # backend_rbd_committed POOL NAME: has a snapshot "snap"
    rbd_ snap ls --format json "$1/$2" 2>/dev/null | grep -q '"name":"snap"'
}
backend_rbd_exists() { backend_rbd_committed "$(backend_rbd_pool "$1")" "$2"; }
backend_rbd_leftovers() { # images without snap, and imagefs's temp images
    local p n; p=$(backend_rbd_pool "$1")
    for n in $(rbd_ ls "$p"); do
        case "$n" in .imagefs-tmp-*) echo "$n"; continue ;; esac
        backend_rbd_committed "$p" "$n" || echo "$n"
    done
}
backend_rbd_trash() { rbd_ trash ls "$(backend_rbd_pool "$1")"; }
backend_rbd_put() { # as Glance's driver: import with order 23, snap, protect
    local p; p=$(backend_rbd_pool "$1")
    rbd_ import --no-progress --order 23 "$3" "$p/$2" >/dev/null &&
        rbd_ snap create "$p/$2@snap" >/dev/null && rbd_ snap protect "$p/$2@snap"
}
backend_rbd_location() {
    echo "rbd://$(ceph_ fsid)/$(backend_rbd_pool "$1")/$2/snap"
}
backend_rbd_mode() {
    rbd_ image-meta get "$(backend_rbd_pool "$1")/$2" imagefs.mode 2>/dev/null || echo 644
}
backend_rbd_server_pids() { cat "$(dirname "$CEPH_CONF_FILE")"/run/osd.*.pid; }
backend_rbd_teardown() {
    local s p
    for s in "${STORES[@]}"; do
        p=$(backend_rbd_pool "$s")
        ceph_ osd pool rm "$p" "$p" --yes-i-really-really-mean-it >/dev/null 2>&1
    done
}

# s3: one bucket per store and run on an S3 server (default Ceph RGW of
# scripts/ceph.sh --rgw; IMAGEFS_S3_ENV=.../s3s/s3s.env for s3s-fs), checked
# with boto3 (Glance's own S3 client), never through the mount.
S3_ENV_FILE="${IMAGEFS_S3_ENV:-${IMAGEFS_STATE:-/var/tmp/imagefs-backends}/ceph/rgw.env}"
backend_s3_bucket() { echo "fusetest-${STATE##*.}-$1" | tr 'A-Z_' 'a-z-'; }
s3py() { # s3py CODE ARGS...: CODE runs with S3 (a boto3 client) and sys.argv
    local code=$1; shift
    # shellcheck disable=SC1090
    ( set -a; . "$S3_ENV_FILE"; set +a
      AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required \
      timeout 300 python3 -c "import boto3, botocore, os, sys
S3 = boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT'], aws_access_key_id=os.environ['S3_ACCESS_KEY'],
    aws_secret_access_key=os.environ['S3_SECRET_KEY'], region_name='us-east-1',
    config=botocore.config.Config(s3={'addressing_style': 'path'}))
$code" "$@" )
}
S3PY_EMPTY='def empty(b):
    try:
        for u in S3.list_multipart_uploads(Bucket=b).get("Uploads", []):
            S3.abort_multipart_upload(Bucket=b, Key=u["Key"], UploadId=u["UploadId"])
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("NoSuchBucket", "NotImplemented"): raise
    try:
        for page in S3.get_paginator("list_objects_v2").paginate(Bucket=b):
            for o in page.get("Contents", []): S3.delete_object(Bucket=b, Key=o["Key"])
        S3.delete_bucket(Bucket=b)
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchBucket": raise'
backend_s3_setup() {
    [ -f "$S3_ENV_FILE" ] || { echo "no S3 server: $S3_ENV_FILE (bash scripts/ceph.sh up --rgw)" >&2; return 1; }
    local s
    for s in "${STORES[@]}"; do
        s3py "$S3PY_EMPTY
empty(sys.argv[1]); S3.create_bucket(Bucket=sys.argv[1])" "$(backend_s3_bucket "$s")" || return 1
    done
}
backend_s3_config_section() {
    # shellcheck disable=SC1090
    ( . "$S3_ENV_FILE"
      printf '[stores.%s]\ntype = "s3"\nhost = "%s"\naccess_key = "%s"\nsecret_key = "%s"\nbucket = "%s"\nlarge_object_chunk_size_mb = 5\n\n' \
        "$1" "$S3_ENDPOINT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$(backend_s3_bucket "$1")" )
}
backend_s3_cat() {
    s3py "sys.stdout.buffer.write(S3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())" \
        "$(backend_s3_bucket "$1")" "$2" 2>/dev/null
}
backend_s3_exists() {
    s3py "S3.head_object(Bucket=sys.argv[1], Key=sys.argv[2])" "$(backend_s3_bucket "$1")" "$2" 2>/dev/null
}
backend_s3_leftovers() { # claims of new ids (.imagefs-tmp-*) and multipart uploads in progress
    # one write, so a reader that stops early (grep -q) breaks no pipe
    s3py "b = sys.argv[1]
out = [o['Key'] for o in S3.list_objects_v2(Bucket=b, Prefix='.imagefs-tmp-').get('Contents', [])]
try:
    out += [u['Key'] for u in S3.list_multipart_uploads(Bucket=b).get('Uploads', [])]
except botocore.exceptions.ClientError as e:
    if e.response['Error']['Code'] != 'NotImplemented': raise
try:
    sys.stdout.write(''.join(k + chr(10) for k in out)); sys.stdout.flush()
except BrokenPipeError:
    os._exit(0)" "$(backend_s3_bucket "$1")"
}
backend_s3_put() { # as Glance's driver: boto3, multipart above 5 MiB
    s3py "from boto3.s3.transfer import TransferConfig
S3.upload_file(sys.argv[3], sys.argv[1], sys.argv[2],
    Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))" \
        "$(backend_s3_bucket "$1")" "$2" "$3"
}
backend_s3_location() {
    # shellcheck disable=SC1090
    ( . "$S3_ENV_FILE"; h=${S3_ENDPOINT#http://}; h=${h#https://}
      case "$S3_ENDPOINT" in https://*) p=s3+https ;; *) p=s3 ;; esac
      echo "$p://$h/$(backend_s3_bucket "$1")/$2" )
}
backend_s3_mode() {
    s3py "print(S3.head_object(Bucket=sys.argv[1], Key=sys.argv[2])['Metadata'].get('imagefs-mode', '644'))" \
        "$(backend_s3_bucket "$1")" "$2"
}
backend_s3_reclaim() { # the local RGW keeps deleted objects' data for 2 h: reclaim it now
    [ "$S3_ENV_FILE" = "$(dirname "$CEPH_CONF_FILE")/rgw.env" ] || return 0
    timeout 600 radosgw-admin -c "$CEPH_CONF_FILE" gc process --include-all >/dev/null 2>&1 ||
        note "radosgw-admin gc process failed (space is reclaimed later)"
}
backend_s3_server_pids() {
    case "$S3_ENV_FILE" in
        */ceph/rgw.env) cat "$(dirname "$S3_ENV_FILE")"/run/client.rgw.*.pid ;;
        */s3s/s3s.env) cat "$(dirname "$S3_ENV_FILE")/s3s.pid" ;;
        *) return 1 ;;
    esac
}
backend_s3_teardown() {
    local s
    for s in "${STORES[@]}"; do
        s3py "$S3PY_EMPTY
empty(sys.argv[1])" "$(backend_s3_bucket "$s")"
    done
}

# ---------------------------------------------------------------------------
# Mount management
# ---------------------------------------------------------------------------
STORES=(a b)
MOUNT_OPTS="${IMAGEFS_MOUNT_OPTS:-allow_other,default_permissions}"

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/self/mounts; }
daemon_pid() { cat "$PIDFILE" 2>/dev/null; }
daemon_alive() { local p; p=$(daemon_pid) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# Says why the daemon is gone, as far as its log and the kernel know (CI
# keeps only what is printed).
report_dead_daemon() { # report_dead_daemon [MOUNTPOINT]
    echo "    (the imagefs daemon is not running any more; the end of its log:)"
    tail -n 15 "$STATE/daemon-$(basename "${1:-$MNT}").log" 2>/dev/null | sed 's/^/      /' || true
    dmesg 2>/dev/null | grep -E 'imagefs|tokio|fuser' | tail -n 5 | sed 's/^/      kernel: /' || true
}

do_mount() { # do_mount [MOUNTPOINT [extra args...]]
    local mnt=${1:-$MNT}; shift || true
    local logopt=()
    # the daemon's own log (--log-file), one per mount point
    if "$BINARY" mount --help 2>/dev/null | grep -q -- --log-file; then
        logopt=(--log-file "$STATE/daemon-$(basename "$mnt").log")
    fi
    echo "+ imagefs mount $mnt --config $CFG $* -o $MOUNT_OPTS ${logopt[*]}" >>"$LOG"
    timeout 60 "$BINARY" mount "$mnt" --config "$CFG" --pid-file "$PIDFILE" \
        -o "$MOUNT_OPTS" "${logopt[@]}" "$@" >>"$LOG" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then echo "mount of $mnt failed (exit $rc); see $LOG" >&2; return 1; fi
    if ! is_mounted "$mnt"; then
        echo "imagefs mount exited 0 but $mnt is not mounted" >&2; return 1
    fi
}

do_umount() { # do_umount [MOUNTPOINT]
    local mnt=${1:-$MNT} i pid
    pid=$(daemon_pid)
    is_mounted "$mnt" || return 0
    for i in 1 2 3 4 5 6 7 8 9 10; do
        fusermount3 -u "$mnt" 2>>"$LOG" && break
        sleep 1
    done
    if is_mounted "$mnt"; then
        echo "fusermount3 -u $mnt kept failing; lazy unmount" >&2
        fusermount3 -uz "$mnt" 2>>"$LOG"
        return 1
    fi
    # The daemon must exit on unmount.
    if [ -n "$pid" ] && [ "$mnt" = "$MNT" ]; then
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
        echo "daemon $pid still running 10 s after unmount" >&2
        return 1
    fi
}

write_config() {
    {
        printf '[mount]\nattr_ttl_ms = 1000\nthreads = 4\n\n'
        local s
        for s in "${STORES[@]}"; do backend config_section "$s"; done
    } >"$CFG"
}

# ---------------------------------------------------------------------------
# Helpers for tests (run in their own bash process, `set -e` is on)
# ---------------------------------------------------------------------------
fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "  $*"; }
newid() { cat /proc/sys/kernel/random/uuid; }

# data NAME SIZE: a cached file of SIZE random bytes (SIZE as for head -c).
data() {
    local f="$STATE/data/$1"
    if [ ! -f "$f" ]; then
        mkdir -p "$STATE/data"
        head -c "$2" /dev/urandom >"$f.tmp" && mv "$f.tmp" "$f"
    fi
    echo "$f"
}

assert_same() { # assert_same EXPECTED_FILE ACTUAL_FILE WHAT
    local out
    if ! out=$(cmp "$1" "$2" 2>&1); then
        fail "$3: bytes differ: $out (sizes $(stat -c %s "$1" 2>/dev/null) vs $(stat -c %s "$2" 2>/dev/null))"
    fi
}
assert_backend_same() { # assert_backend_same EXPECTED_FILE STORE ID
    backend exists "$2" "$3" || fail "backend: store $2 has no committed object $3"
    local out
    if ! out=$(cmp "$1" <(backend cat "$2" "$3") 2>&1); then
        fail "backend object $2/$3 differs from the source: $out"
    fi
}
assert_eq() { # assert_eq ACTUAL EXPECTED WHAT
    [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
}
assert_grep() { # assert_grep PATTERN FILE WHAT
    grep -q -- "$1" "$2" || { sed 's/^/    | /' "$2" | tail -30 >&2; fail "$3: no line matching '$1'"; }
}

# errno_of 'PYTHON STATEMENT' ARGS...: run it (args in a), print OK or EPERM etc.
assert_none_left() { # assert_none_left PATTERN WHAT: no upload leftover in store a matches
    local n
    n=$(backend leftovers a | grep -c -- "$1" || true)
    assert_eq "$n" 0 "$2: $(backend leftovers a | grep -- "$1" | tr '\n' ' ')"
}
assert_trash_empties() { # assert_trash_empties PATTERN WHAT: in a backend with a trash
    # (rbd), no entry of store a matches within 10 s (other tests' replaced
    # versions rightly wait there for an hour)
    local i n
    declare -F "backend_${STORE_TYPE}_trash" >/dev/null || return 0
    for i in $(seq 50); do backend trash a | grep -q -- "$1" || break; sleep 0.2; done
    n=$(backend trash a | grep -c -- "$1" || true)
    assert_eq "$n" 0 "$2: $(backend trash a | grep -- "$1" | tr '\n' ' ')"
}
errno_of() {
    local code=$1; shift
    python3 - "$code" "$@" <<'EOF'
import errno, os, sys
a = sys.argv[2:]
try:
    exec(sys.argv[1])
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
EOF
}

xattr() { getfattr --only-values --absolute-names -n "$1" "$2"; }

SA_() { echo "$MNT/a"; }

# ---------------------------------------------------------------------------
# Tests: t_NAME. Each must be able to fail; compare bytes, not exit codes.
# ---------------------------------------------------------------------------

t_root_lists_stores() {
    local got
    got=$(ls -1 "$MNT" | sort | tr '\n' ' ')
    assert_eq "$got" "a b " "ls of the mount root"
    [ -d "$MNT/a" ] && [ -d "$MNT/b" ] || fail "store entries are not directories"
}

t_cp_cmp() {
    local src id
    src=$(data rand64 "$BIG64")
    id=$(newid)
    cp "$src" "$SA/$id"
    assert_same "$src" "$SA/$id" "cp into the mount, read back"
    assert_eq "$(stat -c %s "$SA/$id")" "$(stat -c %s "$src")" "st_size"
    ls -1 "$SA" | grep -qx "$id" || fail "$id is not listed in $SA"
    assert_backend_same "$src" a "$id"
    rm "$SA/$id"
    [ ! -e "$SA/$id" ] || fail "$id still visible after rm"
    ! backend exists a "$id" || fail "backend object a/$id still exists after rm"
}

t_dd_bs1m() {
    local src id id2 n
    n=$((BIG64_BYTES * 3 / 4 + 12345)) # not a multiple of the block size
    src=$(data dd_src "$n")
    id=$(newid)
    dd if="$src" of="$SA/$id" bs=1M status=none
    dd if="$SA/$id" of="$WORK/dd_out" bs=1M status=none
    assert_same "$src" "$WORK/dd_out" "dd in bs=1M, dd out bs=1M"
    assert_backend_same "$src" a "$id"
    # conv=fsync: commit at fsync, then close.
    id2=$(newid)
    dd if="$src" of="$SA/$id2" bs=1M conv=fsync status=none
    assert_same "$src" "$SA/$id2" "dd conv=fsync"
    assert_backend_same "$src" a "$id2"
}

t_rsync_twice() {
    local d="$WORK/rsync_src" f i=0 names=() modes=(644 640 600 444 755)
    local sizes=(1 4096 1048577 5242880 3145805)
    rm -rf "$d"; mkdir -p "$d"
    for i in 0 1 2 3 4; do
        f=$(newid); names+=("$f")
        head -c "${sizes[$i]}" /dev/urandom >"$d/$f"
        chmod "${modes[$i]}" "$d/$f"
        touch -d "2021-03-0$((i + 1)) 05:06:07.123456789" "$d/$f"
    done
    rsync -a --stats "$d/" "$SA/" >"$WORK/rsync1.out" 2>&1 ||
        { cat "$WORK/rsync1.out" >&2; fail "first rsync -a exited $?"; }
    assert_grep "Number of regular files transferred: 5" "$WORK/rsync1.out" "first rsync"
    for i in 0 1 2 3 4; do
        f=${names[$i]}
        assert_same "$d/$f" "$SA/$f" "rsync'd file $f"
        assert_backend_same "$d/$f" a "$f"
        assert_eq "$(stat -c %a "$SA/$f")" "${modes[$i]}" "mode of $f"
        assert_eq "$(stat -c %Y "$SA/$f")" "$(stat -c %Y "$d/$f")" "mtime of $f"
        if ls -A "$SA" | grep -q "^\.$f\."; then fail "rsync temp file .$f.* left visible"; fi
    done
    rsync -a --stats "$d/" "$SA/" >"$WORK/rsync2.out" 2>&1 ||
        { cat "$WORK/rsync2.out" >&2; fail "second rsync -a exited $?"; }
    assert_grep "Number of regular files transferred: 0" "$WORK/rsync2.out" "second rsync must copy nothing"
}

t_mv_between_stores() {
    local src id id2 e
    src=$(data mv_src 16M)
    id=$(newid)
    cp "$src" "$SA/$id"
    e=$(errno_of 'os.rename(a[0], a[1])' "$SA/$id" "$SB/$id")
    assert_eq "$e" EXDEV "rename(2) across stores"
    mv "$SA/$id" "$SB/$id"
    [ ! -e "$SA/$id" ] || fail "source $SA/$id still visible after mv"
    ! backend exists a "$id" || fail "backend a still has $id after mv"
    assert_same "$src" "$SB/$id" "mv'd image read through the mount"
    assert_backend_same "$src" b "$id"
    # rename inside one store
    id2=$(newid)
    mv "$SB/$id" "$SB/$id2"
    [ ! -e "$SB/$id" ] || fail "old name still visible after rename in store"
    ! backend exists b "$id" || fail "backend b still has old name $id after rename"
    assert_same "$src" "$SB/$id2" "renamed image"
    assert_backend_same "$src" b "$id2"
}

t_qemu_img() {
    local q r raw qc local_raw out
    q="$SA/$(newid)"; r="$SA/$(newid)"; raw="$SA/$(newid)"; qc=$(newid)
    # create qcow2 and raw in the mount
    qemu-img create -q -f qcow2 "$q" 1G
    qemu-img check -q "$q" || fail "qemu-img check of a fresh qcow2 failed"
    out=$(qemu-img info --output=json "$q")
    python3 -c 'import json,sys; i=json.loads(sys.argv[1]); assert i["format"]=="qcow2" and i["virtual-size"]==1<<30, i' "$out" ||
        fail "qemu-img info of the new qcow2: $out"
    # in-place writes to an existing qcow2 (copy-on-write in imagefs)
    out=$(qemu-io -f qcow2 -c 'write -q -P 0xab 1M 2M' "$q" 2>&1) || fail "qemu-io write into qcow2: $out"
    [ -z "$out" ] || fail "qemu-io write into qcow2: $out"
    out=$(qemu-io -f qcow2 -c 'read -q -P 0xab 1M 2M' -c 'read -q -P 0 0 1M' "$q" 2>&1) ||
        fail "qemu-io read-back: $out"
    [ -z "$out" ] || fail "qemu-io read-back of the written pattern: $out"
    qemu-img check -q "$q" || fail "qemu-img check after qemu-io write failed"
    qemu-img create -q -f raw "$r" 64M
    assert_eq "$(stat -c %s "$r")" 67108864 "size of raw created by qemu-img"
    cmp -s "$r" <(head -c 64M /dev/zero) || fail "new raw image is not all zeros"
    # a sparse raw disk with data in places, copied in, converted inside the mount
    local_raw="$WORK/disk.raw"
    rm -f "$local_raw"
    qemu-img create -q -f raw "$local_raw" 96M
    for off in 0 7 31 64 95; do
        head -c 1M /dev/urandom | dd of="$local_raw" bs=1M seek="$off" conv=notrunc status=none
    done
    cp "$local_raw" "$raw"
    assert_same "$local_raw" "$raw" "sparse raw copied in"
    qemu-img convert -f raw -O qcow2 "$raw" "$SA/$qc" || fail "qemu-img convert raw->qcow2 in the mount"
    qemu-img check -q "$SA/$qc" || fail "qemu-img check of the converted qcow2"
    qemu-img compare -q -f raw -F qcow2 "$raw" "$SA/$qc" || fail "qemu-img compare raw vs converted qcow2"
    qemu-img convert -f qcow2 -O raw "$SA/$qc" "$WORK/back.raw"
    assert_same "$local_raw" "$WORK/back.raw" "qcow2 converted in the mount, back to raw"
    backend cat a "$qc" >"$WORK/qc.backend"
    assert_same "$SA/$qc" "$WORK/qc.backend" "converted qcow2 in the backend"
    rm -f "$WORK/back.raw" "$WORK/qc.backend" "$local_raw"
}

t_hashes_xattrs() {
    local src id v
    src=$(data hash_src 20971527)
    id=$(newid)
    cp "$src" "$SA/$id"
    v=$(xattr user.imagefs.os_hash_value "$SA/$id") || fail "getfattr user.imagefs.os_hash_value failed"
    assert_eq "$v" "$(sha512sum <"$SA/$id" | cut -d' ' -f1)" "os_hash_value vs sha512sum of the image"
    assert_eq "$v" "$(sha512sum <"$src" | cut -d' ' -f1)" "os_hash_value vs sha512sum of the source"
    v=$(xattr user.imagefs.checksum "$SA/$id") || fail "getfattr user.imagefs.checksum failed"
    assert_eq "$v" "$(md5sum <"$SA/$id" | cut -d' ' -f1)" "checksum vs md5sum of the image"
    assert_eq "$v" "$(md5sum <"$src" | cut -d' ' -f1)" "checksum vs md5sum of the source"
    v=$(xattr user.imagefs.location "$SA/$id") || fail "getfattr user.imagefs.location failed"
    assert_eq "$v" "$(backend location a "$id")" "user.imagefs.location"
    getfattr --absolute-names -d -m '^user\.imagefs\.' "$SA/$id" >"$WORK/xattrs" ||
        fail "listxattr (getfattr -d) failed"
    for v in location checksum os_hash_value; do
        assert_grep "user.imagefs.$v=" "$WORK/xattrs" "listxattr"
    done
}

t_hashes_after_overwrite() {
    # DESIGN: random writes to an existing image work (copy-on-write) and the
    # checksums describe the image's bytes.
    local src id
    src=$(data hash2_src 8M)
    id=$(newid)
    cp "$src" "$SA/$id"
    cp "$src" "$WORK/hash2_expected"
    head -c 4096 /dev/urandom >"$WORK/patch"
    dd if="$WORK/patch" of="$SA/$id" bs=4096 seek=100 conv=notrunc status=none
    dd if="$WORK/patch" of="$WORK/hash2_expected" bs=4096 seek=100 conv=notrunc status=none
    assert_same "$WORK/hash2_expected" "$SA/$id" "image after an in-place 4 KiB overwrite"
    assert_backend_same "$WORK/hash2_expected" a "$id"
    assert_eq "$(xattr user.imagefs.checksum "$SA/$id")" "$(md5sum <"$WORK/hash2_expected" | cut -d' ' -f1)" \
        "checksum after overwrite"
    assert_eq "$(xattr user.imagefs.os_hash_value "$SA/$id")" "$(sha512sum <"$WORK/hash2_expected" | cut -d' ' -f1)" \
        "os_hash_value after overwrite"
}

t_glance_thin_write() {
    local src="$WORK/thin_src" id
    id=$(newid)
    # 100 chunks of 64 KiB, every third one zero, then 3 zero chunks and a
    # partial zero chunk: the file ends in a hole only truncate() can make.
    python3 - "$src" <<'EOF'
import os, sys
CH = 65536
with open(sys.argv[1], "wb") as f:
    for i in range(100):
        f.write(bytes(CH) if i % 3 == 1 else os.urandom(CH))
    f.write(bytes(3 * CH + 1000))
EOF
    python3 - "$src" "$SA/$id" <<'EOF'
# What glance_store's filesystem driver does with filesystem_thin_provisioning.
import os, sys
os.umask(0o027)
src, dst = sys.argv[1], sys.argv[2]
CH = 65536
n = 0
with open(src, "rb") as s, open(dst, "wb") as f:
    while True:
        buf = s.read(CH)
        if not buf:
            break
        n += len(buf)
        if buf.count(0) == len(buf):
            f.seek(len(buf), os.SEEK_CUR)
        else:
            f.write(buf)
    f.truncate(n)
os.chmod(dst, 0o640)
EOF
    assert_same "$src" "$SA/$id" "thin-provisioned write"
    assert_backend_same "$src" a "$id"
    assert_eq "$(stat -c %a "$SA/$id")" 640 "mode through the mount"
    local m; m=$(backend mode a "$id")
    [ "$m" = - ] || assert_eq "$m" 640 "mode in the backend"
    assert_eq "$(xattr user.imagefs.checksum "$SA/$id")" "$(md5sum <"$src" | cut -d' ' -f1)" "checksum of the thin write"
}

t_commit_at_close() {
    local id fifo
    id=$(newid)
    fifo="$WORK/commit.fifo"; rm -f "$fifo"; mkfifo "$fifo"
    # writer: writes 1 MiB, then waits for a line on the fifo before closing
    python3 - "$SA/$id" "$fifo" <<'EOF' &
import os, sys
f = open(sys.argv[1], "wb")
f.write(b"x" * (1 << 20))
f.flush()
open(sys.argv[2] + ".ready", "w").close()
open(sys.argv[2]).read()
f.close()
EOF
    local w=$! i
    for i in $(seq 100); do [ -e "$fifo.ready" ] && break; sleep 0.1; done
    [ -e "$fifo.ready" ] || { echo >"$fifo"; fail "writer did not get going"; }
    local ok=1 why=""
    if backend exists a "$id"; then ok=0; why="committed object exists before close"; fi
    if ! backend leftovers a | grep -q "$id"; then ok=0; why="$why; no in-progress upload object for $id in the backend"; fi
    if ls -A "$SA" | grep -q '^\.imagefs-tmp-'; then ok=0; why="$why; .imagefs-tmp-* visible in the mount listing"; fi
    echo >"$fifo"
    wait $w || fail "writer failed"
    [ $ok = 1 ] || fail "while open for write: $why"
    backend exists a "$id" || fail "no committed object after close"
    if backend leftovers a | grep -q "$id"; then fail "upload leftover for $id after close"; fi
    assert_eq "$(stat -c %s "$SA/$id")" 1048576 "size after close"
}

t_dup_close_fsync_write() {
    # Closing a duplicate while the process still holds the file (what
    # `dd of=` and shell redirections do) does not publish; fsync does; a
    # write after fsync is in the image at the last close, with checksums
    # describing the final bytes.
    local id fifo
    id=$(newid)
    fifo="$WORK/dup.fifo"; rm -f "$fifo" "$fifo".*; mkfifo "$fifo"
    python3 - "$SA/$id" "$fifo" "$WORK/dup_expected" <<'EOF' &
import os, sys
path, fifo, expected = sys.argv[1:]
a, b, c = os.urandom(3 << 20), os.urandom(1 << 20), os.urandom(5000)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, a)
os.close(os.dup(fd))
open(fifo + ".dup", "w").close()
open(fifo).read()
os.write(fd, b)
os.fsync(fd)
open(fifo + ".fsync", "w").close()
open(fifo).read()
os.write(fd, c)
os.close(fd)
open(expected, "wb").write(a + b + c)
EOF
    local w=$! i ok=1 why=""
    for i in $(seq 100); do [ -e "$fifo.dup" ] && break; sleep 0.1; done
    [ -e "$fifo.dup" ] || { echo >"$fifo"; fail "writer did not get going"; }
    if backend exists a "$id"; then ok=0; why="committed after closing a duplicate"; fi
    echo >"$fifo"
    for i in $(seq 100); do [ -e "$fifo.fsync" ] && break; sleep 0.1; done
    if ! backend exists a "$id"; then ok=0; why="$why; not committed by fsync"; fi
    echo >"$fifo"
    wait $w || fail "writer failed"
    [ $ok = 1 ] || fail "$why"
    cmp "$WORK/dup_expected" "$SA/$id" || fail "image differs from what was written"
    assert_backend_same "$WORK/dup_expected" a "$id"
    assert_eq "$(xattr user.imagefs.os_hash_value "$SA/$id")" \
        "$(sha512sum <"$WORK/dup_expected" | cut -d' ' -f1)" "os_hash_value after a write past fsync"
    assert_eq "$(xattr user.imagefs.checksum "$SA/$id")" \
        "$(md5sum <"$WORK/dup_expected" | cut -d' ' -f1)" "checksum after a write past fsync"
}

t_write_while_reading() {
    # A writer of an image this mount is reading: once it has closed, the
    # reader reads what it wrote, as with a local file (file store: the
    # kernel makes every open of the inode pass through to one file; other
    # stores: the commit drops the inode's read-ahead, and the writer's
    # open dropped the kernel's cached pages). The checksums describe the
    # final bytes.
    local src id
    src=$(data wwr_src 6M)
    id=$(newid)
    cp "$src" "$SA/$id"
    python3 - "$SA/$id" "$WORK/wwr_expected" "$src" <<'EOF' || fail "write while reading"
import os, sys
path, expected, src = sys.argv[1:]
data = bytearray(open(src, "rb").read())
r = os.open(path, os.O_RDONLY)
os.read(r, 4096)
w = os.open(path, os.O_WRONLY)
patch = os.urandom(65536)
os.pwrite(w, patch, 1 << 20)
data[1 << 20:(1 << 20) + len(patch)] = patch
os.close(w)
assert os.pread(r, len(patch), 1 << 20) == patch, "reader does not see the write"
os.close(r)
open(expected, "wb").write(data)
EOF
    cmp "$WORK/wwr_expected" "$SA/$id" || fail "image differs from what was written"
    assert_backend_same "$WORK/wwr_expected" a "$id"
    assert_eq "$(xattr user.imagefs.os_hash_value "$SA/$id")" \
        "$(sha512sum <"$WORK/wwr_expected" | cut -d' ' -f1)" "os_hash_value after writing while reading"
}

t_read_beside_writer() {
    # A reader that opens an image while a write-only descriptor writes it
    # (direct I/O where the kernel allows it, so the reader is direct too):
    # its reads and its shared mapping see every write once it returned,
    # never a stale page; the image is what was written.
    local id
    id=$(newid)
    python3 - "$SA/$id" "$WORK/rbw_expected" <<'EOF' || fail "read beside writer"
import mmap, os, sys
path, expected = sys.argv[1:]
w = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
data = bytearray(os.urandom(3 << 20))
os.pwrite(w, data, 0)
r = os.open(path, os.O_RDONLY)
assert os.pread(r, 4096, 1 << 20) == data[1 << 20:(1 << 20) + 4096], "reader misses the first write"
m = mmap.mmap(r, len(data), mmap.MAP_SHARED, mmap.PROT_READ)
assert m[:65536] == data[:65536], "mapping misses the first write"
patch = os.urandom(65536)
os.pwrite(w, patch, 4096)
data[4096:4096 + len(patch)] = patch
assert os.pread(r, 65536, 4096) == patch, "reader sees a stale page"
assert m[4096:4096 + 65536] == patch, "mapping shows a stale page"
m.close()
os.close(r)
os.close(w)
open(expected, "wb").write(data)
EOF
    cmp "$WORK/rbw_expected" "$SA/$id" || fail "image differs from what was written"
    assert_backend_same "$WORK/rbw_expected" a "$id"
}

t_backend_image_visible() {
    # images Glance writes itself appear in the mount
    local src id i
    src=$(data glance_src 3M)
    id=$(newid)
    backend put a "$id" "$src"
    for i in $(seq 30); do [ -e "$SA/$id" ] && break; sleep 0.2; done
    ls -1 "$SA" | grep -qx "$id" || fail "image put in the backend is not listed within 6 s"
    assert_same "$src" "$SA/$id" "image written by Glance, read through the mount"
}

t_exclusive_create() {
    local id e
    id=$(newid)
    echo hello >"$SA/$id"
    e=$(errno_of 'os.open(a[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)' "$SA/$id")
    assert_eq "$e" EEXIST "open(O_CREAT|O_EXCL) of an existing image"
    assert_eq "$(cat "$SA/$id")" hello "image content after the failed exclusive create"
}

t_times_stable_after_create() {
    # The times a new image shows right after close are the ones it keeps:
    # they must not change when the attribute cache (attr_ttl_ms) expires.
    python3 - "$SA/$(newid)" "$SA/$(newid)" <<'EOF2'
import os, sys, time
bad = []
for path, data in ((sys.argv[1], b""), (sys.argv[2], b"x" * 100000)):
    with open(path, "wb") as f:
        f.write(data)
    s0 = os.stat(path)
    time.sleep(1.5)  # > attr_ttl_ms
    s1 = os.stat(path)
    for k in ("st_mtime_ns", "st_ctime_ns"):
        if getattr(s0, k) != getattr(s1, k):
            bad.append(f"{len(data)}-byte image: {k} {getattr(s0, k)} right after close, "
                       f"{getattr(s1, k)} 1.5 s later")
if bad:
    sys.exit("FAIL: times changed with no change to the image: " + "; ".join(bad))
EOF2
}

t_read_then_rm() {
    # Read an image, close it, unlink it at once: close() returns before the
    # kernel's RELEASE, which then races with the UNLINK. Ten rounds;
    # nothing may be left behind (rbd: no clone kept for the closed reader,
    # and the trash, where its deleted image waited for it, empties).
    local src i
    src=$(data rtr_src 3M)
    for i in $(seq 10); do cp "$src" "$SA/rtr$i"; done
    python3 - "$SA" "$src" <<'EOF' || fail "read then rm"
import os, sys
d, src = sys.argv[1:]
want = open(src, "rb").read()
for i in range(1, 11):
    p = os.path.join(d, f"rtr{i}")
    with open(p, "rb") as f:
        assert f.read() == want, f"rtr{i} differs"
    os.unlink(p)
EOF
    assert_none_left 'rtr[0-9]*' "upload leftovers in the backend"
    assert_trash_empties '-rtr[0-9]*\.' "deleted images still waiting"
}

t_rm_while_reading() {
    # An image unlinked while two descriptors only read it, one that has
    # read and one that has not: both read it whole afterwards, and no
    # copy of it is made in the backend for them meanwhile (rbd: no clone;
    # they read the deleted version, which waits in the trash); once they
    # close, nothing of it is left.
    local src
    src=$(data rwr_src 6M)
    cp "$src" "$SA/rwr1"
    exec 7<"$SA/rwr1" 8<"$SA/rwr1"
    python3 -c 'import os, sys; assert os.pread(7, 4096, 0) == open(sys.argv[1], "rb").read(4096)' "$src" ||
        fail "first read"
    rm "$SA/rwr1"
    [ ! -e "$SA/rwr1" ] || fail "rwr1 still there after rm"
    assert_none_left rwr1 "copies made for the readers"
    python3 - "$src" <<'EOF' || fail "reads after rm"
import os, sys
want = open(sys.argv[1], "rb").read()
for fd in (7, 8):
    got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, len(want) + 1, 1 << 20))
    assert got == want, f"descriptor {fd} reads {len(got)} other bytes after rm"
    assert os.fstat(fd).st_nlink == 0, f"descriptor {fd}: st_nlink {os.fstat(fd).st_nlink}"
os.fchmod(8, 0o600)
assert os.fstat(8).st_mode & 0o7777 == 0o600, f"fchmod after rm: mode {os.fstat(8).st_mode:o}"
EOF
    exec 7<&- 8<&-
    ! backend exists a rwr1 || fail "rwr1 is back in the backend after close"
    assert_none_left rwr1 "leftovers after close"
    assert_trash_empties '-rwr1\.' "the deleted image still waits in the trash"
}

t_unlink_while_open() {
    # POSIX: an unlinked file stays usable through descriptors already open;
    # fstat shows st_nlink 0. Checked for a new image being written, a
    # committed image open read-write, and one open read-only.
    python3 - "$SA" <<'EOF2'
import os, sys
d = sys.argv[1]
bad = []
def check(name, content, flags):
    p = os.path.join(d, name)
    if content is not None:
        with open(p, "wb") as f:
            f.write(content)
    fd = os.open(p, flags, 0o644)
    try:
        os.unlink(p)
        try:
            st = os.fstat(fd)
            if st.st_nlink != 0:
                bad.append(f"{name}: fstat st_nlink {st.st_nlink} after unlink, expected 0")
        except OSError as e:
            bad.append(f"{name}: fstat after unlink: {e.strerror}")
        try:
            if flags & os.O_RDWR:
                os.pwrite(fd, b"Hello", 0)
                want = b"Hello"
            else:
                want = content[:5]
            got = os.pread(fd, 5, 0)
            if got != want:
                bad.append(f"{name}: read {got!r} after unlink, expected {want!r}")
        except OSError as e:
            bad.append(f"{name}: I/O after unlink: {e.strerror}")
    finally:
        os.close(fd)
    if os.path.exists(p):
        bad.append(f"{name}: visible again after close")
base = os.urandom(8).hex()
check("unl-new-" + base, None, os.O_RDWR | os.O_CREAT | os.O_EXCL)
check("unl-rw-" + base, b"committed data", os.O_RDWR)
check("unl-ro-" + base, b"committed data", os.O_RDONLY)
if bad:
    sys.exit("FAIL: " + "; ".join(bad))
EOF2
}

t_rename_while_open() {
    # POSIX: descriptors follow a renamed file, and one open on a file a
    # rename replaces keeps reading the replaced content. Checked for a
    # committed image open read-only and one open read-write (its write
    # is committed at close under the new name), and for a new image
    # being written (written on under its new name).
    python3 - "$SA" <<'EOF2'
import os, sys
d = sys.argv[1]
bad = []
base = os.urandom(8).hex()
def p(n):
    return os.path.join(d, f"ren-{n}-{base}")
def put(n, data):
    with open(p(n), "wb") as f:
        f.write(data)
def expect(what, got, want):
    if got != want:
        bad.append(f"{what}: {got!r}, expected {want!r}")
old = os.urandom(3 << 20)
put("ro", old)
put("rw", old)
put("target", b"replaced content")
put("src", b"new content")
ro = os.open(p("ro"), os.O_RDONLY)
rw = os.open(p("rw"), os.O_RDWR)
tg = os.open(p("target"), os.O_RDONLY)
nw = os.open(p("new"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
first = os.urandom(1 << 20)
os.write(nw, first)
try:
    os.rename(p("new"), p("new2"))
    os.rename(p("ro"), p("ro2"))
    os.rename(p("rw"), p("rw2"))
    os.rename(p("src"), p("target"))
    def io(what, f, want):
        try:
            expect(what, f(), want)
        except OSError as e:
            bad.append(f"{what}: {e.strerror}")
    io("read-only after rename", lambda: os.pread(ro, 100, (3 << 20) - 100), old[-100:])
    io("write after rename", lambda: os.pwrite(rw, b"Hello", 0), 5)
    io("read-write after rename", lambda: os.pread(rw, 8, 0), b"Hello" + old[5:8])
    io("replaced target", lambda: os.pread(tg, 100, 0), b"replaced content")
    io("write to a new image after rename", lambda: os.write(nw, b"tail"), 4)
finally:
    for fd in (ro, rw, tg, nw):
        os.close(fd)
with open(p("new2"), "rb") as f:
    expect("new2 after close", f.read() == first + b"tail", True)
with open(p("rw2"), "rb") as f:
    got = f.read()
expect("rw2 after close", (len(got), got[:8], got[8:] == old[8:]), (len(old), b"Hello" + old[5:8], True))
with open(p("target"), "rb") as f:
    expect("target after close", f.read(), b"new content")
for n in ("ro", "rw", "src", "new"):
    if os.path.exists(p(n)):
        bad.append(f"{n}: still there after the rename")
if bad:
    sys.exit("FAIL: " + "; ".join(bad))
EOF2
}

t_reuse_name_while_open() {
    # A name unlinked while a descriptor still reads it can be used for a
    # new image at once; the two stay apart, and nothing of the old one
    # comes back when its last descriptor closes.
    python3 - "$SA" <<'EOF2'
import os, sys
d = sys.argv[1]
p = os.path.join(d, "reuse-" + os.urandom(8).hex())
old, new = os.urandom(3 << 20), os.urandom(1 << 20)
with open(p, "wb") as f:
    f.write(old)
bad = []
fd = os.open(p, os.O_RDONLY)
try:
    os.unlink(p)
    with open(p, "xb") as f:
        f.write(new)
    got = os.pread(fd, 100, (3 << 20) - 100)
    if got != old[-100:]:
        bad.append(f"old descriptor read {got[:8]!r}..., expected the old image")
    st = os.fstat(fd)
    if (st.st_nlink, st.st_size) != (0, len(old)):
        bad.append(f"old descriptor fstat nlink {st.st_nlink} size {st.st_size}")
except OSError as e:
    bad.append(f"{e.strerror} ({e.filename})")
finally:
    os.close(fd)
with open(p, "rb") as f:
    if f.read() != new:
        bad.append("the new image differs after the old descriptor closed")
# The same for a new image unlinked while its writer still writes it.
q = os.path.join(d, "reuse-new-" + os.urandom(8).hex())
first, second = os.urandom(6 << 20), os.urandom(1 << 20)
w = os.open(q, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
try:
    os.write(w, first[:3 << 20])
    os.unlink(q)
    with open(q, "xb") as f:
        f.write(second)
    os.write(w, first[3 << 20:])
    if os.fstat(w).st_nlink != 0:
        bad.append(f"unlinked writer fstat nlink {os.fstat(w).st_nlink}")
except OSError as e:
    bad.append(f"new image: {e.strerror} ({e.filename})")
finally:
    os.close(w)
with open(q, "rb") as f:
    if f.read() != second:
        bad.append("the image written after the unlink differs once the first writer closed")
if os.listdir(d).count(os.path.basename(q)) != 1:
    bad.append("the reused name is not listed once")
if bad:
    sys.exit("FAIL: " + "; ".join(bad))
EOF2
}

t_name_max() {
    # names longer than statvfs f_namemax: ENAMETOOLONG for every operation
    python3 - "$SA" <<'EOF2'
import errno, os, sys
d = sys.argv[1]
nmax = os.statvfs(d).f_namemax
print(f"  f_namemax = {nmax}")
ok = os.path.join(d, "n" * nmax)
long = os.path.join(d, "m" * (nmax + 1))
open(ok, "wb").close()
bad = []
def want(what, f):
    try:
        f()
        bad.append(f"{what}: succeeded")
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            bad.append(f"{what}: {errno.errorcode.get(e.errno, e.errno)}")
want("create", lambda: open(long, "wb").close())
want("stat", lambda: os.stat(long))
want("unlink", lambda: os.unlink(long))
want("chmod", lambda: os.chmod(long, 0o600))
want("truncate", lambda: os.truncate(long, 0))
want("rename onto", lambda: os.rename(ok, long))
for p in (ok, long):
    try:
        os.unlink(p)
    except OSError:
        pass
if bad:
    sys.exit(f"FAIL: names of f_namemax+1 = {nmax + 1} bytes, expected ENAMETOOLONG: " + "; ".join(bad))
EOF2
}

timed_errno() { # timed_errno EXPECTED WHAT 'PY' ARGS...: errno and < 2 s
    local exp=$1 what=$2 code=$3 t0 t1 e; shift 3
    t0=$(date +%s%N)
    e=$(errno_of "$code" "$@")
    t1=$(date +%s%N)
    [ "$e" = "$exp" ] || { echo "FAIL: $what: expected $exp, got $e" >&2; return 1; }
    [ $(((t1 - t0) / 1000000)) -lt 2000 ] || { echo "FAIL: $what took $(((t1 - t0) / 1000000)) ms" >&2; return 1; }
    note "$what -> $e"
}

t_errno_mkdir() {
    local n; n="$SA/dir-$(newid)"
    timed_errno EPERM "mkdir in a store" 'os.mkdir(a[0])' "$n" || exit 1
    [ ! -e "$n" ] || fail "mkdir failed but $n exists"
}

t_errno_symlink() {
    local n; n="$SA/sym-$(newid)"
    timed_errno EPERM "symlink in a store" 'os.symlink("target", a[0])' "$n" || exit 1
    [ ! -e "$n" ] && [ ! -L "$n" ] || fail "symlink failed but $n exists"
}

t_errno_link_mkfifo() {
    local id rc=0; id=$(newid)
    echo x >"$SA/$id"
    timed_errno EPERM "hard link in a store" 'os.link(a[0], a[1])' "$SA/$id" "$SA/lnk-$id" || rc=1
    timed_errno EPERM "mkfifo in a store" 'os.mkfifo(a[0])' "$SA/fifo-$id" || rc=1
    timed_errno EPERM "mknod (socket) in a store" 'import stat; os.mknod(a[0], 0o600 | stat.S_IFSOCK)' "$SA/sock-$id" || rc=1
    return $rc
}

t_concurrent_readers() {
    local src id i pids=() bs=(4k 8k 16k 32k 64k 128k 256k 512k 1M 2M 4M 3k 100k 1000k 7k 8M)
    src=$(data rand256 "$BIG256")
    id=$(newid)
    cp "$src" "$SA/$id"
    for i in $(seq 0 15); do
        ( rc=0; dd if="$SA/$id" bs="${bs[$i]}" status=none | cmp - "$src" >"$WORK/reader$i.out" 2>&1 || rc=$?
          echo $rc >"$WORK/reader$i.rc" ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    local bad=0
    for i in $(seq 0 15); do
        if [ "$(cat "$WORK/reader$i.rc")" != 0 ]; then
            echo "  reader $i (bs=${bs[$i]}): $(cat "$WORK/reader$i.out")" >&2; bad=$((bad + 1))
        fi
    done
    [ $bad = 0 ] || fail "$bad of 16 concurrent readers read wrong bytes"
    rm -f "$SA/$id"
}

t_big_write_memory() {
    # A large image (8 GiB, 1 GiB on file stores; --quick: 512 MiB) written through the mount keeps
    # the daemon's peak RSS under 256 MiB, whatever the store buffers (S3:
    # parts in flight; RBD: writes queued), and arrives whole: its size, its
    # md5 (user.imagefs.checksum) and the backend's committed object.
    local src id pid n hwm sum want mib=$BIG_WRITE_MIB
    # a file store writes the datadir's disk, not a server: 1 GiB is enough there
    if [ "$STORE_TYPE" = file ] && [ "$mib" -gt 1024 ]; then mib=1024; fi
    src=$(data big_write 256M)
    n=$((mib / 256))
    id=$(newid)
    pid=$(daemon_pid)
    [ -n "$pid" ] || fail "no daemon pid in $PIDFILE"
    # What earlier tests freed (concurrent_readers: 16 read-aheads of up to
    # 32 MiB) goes back to the kernel: the daemon trims its heap every 10 s.
    local rss i
    for i in $(seq 30); do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        [ "$rss" -lt $((128 << 10)) ] && break
        sleep 1
    done
    [ "$rss" -lt $((128 << 10)) ] || fail "daemon RSS still $((rss / 1024)) MiB, 30 s after the previous test"
    note "daemon RSS before the write: $((rss / 1024)) MiB"
    echo 5 >"/proc/$pid/clear_refs" # peak RSS (VmHWM) starts again from now
    # the stream's md5 is taken on the way (one pass over the data)
    mkfifo "$WORK/big_write.fifo"
    md5sum <"$WORK/big_write.fifo" >"$WORK/big_write.md5" &
    local hasher=$!
    (for i in $(seq $n); do cat "$src"; done) | tee "$WORK/big_write.fifo" |
        dd of="$SA/$id" bs=1M iflag=fullblock status=none ||
        fail "writing $mib MiB through the mount"
    wait "$hasher" || fail "md5sum of the written stream"
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    note "$mib MiB written; daemon peak RSS $((hwm / 1024)) MiB"
    [ "$hwm" -lt $((256 << 10)) ] || fail "daemon peak RSS $((hwm / 1024)) MiB during the write (bound: 256 MiB)"
    want=$((mib << 20))
    assert_eq "$(stat -c %s "$SA/$id")" "$want" "size of the written image"
    backend exists a "$id" || fail "no committed object $id in the backend"
    sum=$(cut -d' ' -f1 "$WORK/big_write.md5")
    rm -f "$WORK/big_write.fifo" "$WORK/big_write.md5"
    assert_eq "$(xattr user.imagefs.checksum "$SA/$id")" "$sum" "md5 of the written image"
    rm "$SA/$id"
    ! backend exists a "$id" || fail "the image is still in the backend after rm"
    if declare -F "backend_${STORE_TYPE}_reclaim" >/dev/null; then backend reclaim; fi
}

t_fsx() {
    local id conf="$WORK/fsx.toml" art="$WORK/fsx-artifacts"
    id=$(newid)
    mkdir -p "$art"
    # posix_fallocate and punch_hole are off: imagefs does not implement
    # fallocate (not among the operations DESIGN.md promises) and fsx treats
    # EOPNOTSUPP as a failure. Everything else FUSE can carry is on.
    cat >"$conf" <<'EOF'
flen = 1048576
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 5
fsync = 1
fdatasync = 1
sendfile = 2
posix_fadvise = 1
copy_file_range = 2
posix_fallocate = 0
punch_hole = 0
EOF
    if ! fsx -N "$FSX_OPS" -S 20260101 -P "$art" -f "$conf" "$SA/$id" >"$WORK/fsx.out" 2>&1; then
        tail -40 "$WORK/fsx.out" >&2
        fail "fsx failed (artifacts in $art)"
    fi
    tail -3 "$WORK/fsx.out"
    backend cat a "$id" >"$WORK/fsx.backend"
    assert_same "$WORK/fsx.backend" "$SA/$id" "fsx file: backend vs mount after close"
    rm -f "$WORK/fsx.backend"
}

# pjdfstest: the exclusions in pjdfstest-exclude.txt (regexes on test names,
# with reasons) are removed from the full list; everything else must pass.
# Upstream pjdfstest makes a temporary directory under -p and another one per
# test case; a store has no subdirectories, so the cases run through
# pjdfstest-flat (pjdfstest-flat.patch, PJDFSTEST_FLAT=1): the same cases, run
# directly in the store directory, each case's files removed after it.
t_pjdfstest() {
    local all="$WORK/pjd-all.txt" sel="$WORK/pjd-selected.txt" conf="$HERE/pjdfstest.toml"
    command -v pjdfstest-flat >/dev/null || fail "pjdfstest-flat not installed (scripts/install-deps.sh)"
    # the full list of test names: run the suite once on a local scratch dir
    mkdir -p "$WORK/pjd-local"
    # (without PJDFSTEST_FLAT, pjdfstest-flat runs as the unpatched pjdfstest)
    pjdfstest-flat -c "$conf" -p "$WORK/pjd-local" >"$WORK/pjd-local.out" 2>&1 || true
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/pjd-local.out" | awk '$1 ~ /::/ { print $1 }' | sort -u >"$all"
    [ -s "$all" ] || { tail "$WORK/pjd-local.out" >&2; fail "could not list pjdfstest's tests"; }
    grep -v '^[[:space:]]*\(#\|$\)' "$HERE/pjdfstest-exclude.txt" | cut -f1 | sed 's/[[:space:]]*$//' >"$WORK/pjd-excl.re"
    grep -v -E -f "$WORK/pjd-excl.re" "$all" >"$sel" || true
    note "pjdfstest: $(wc -l <"$all") tests, $(wc -l <"$sel") selected after exclusions"
    [ -s "$sel" ] || fail "every pjdfstest test is excluded"
    local rc=0
    ls -A "$SA" | sort >"$WORK/pjd-before.ls"
    # -e matches the untrimmed names, which carry a pjdfstest::tests:: prefix
    (cd "$WORK" && PJDFSTEST_FLAT=1 RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 pjdfstest-flat -c "$conf" -e -p "$SA" $(sed 's/^/pjdfstest::tests::/' "$sel")) >"$WORK/pjd.out" 2>&1 || rc=$?
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/pjd.out" >"$WORK/pjd.txt"
    if [ $rc -ne 0 ]; then
        if ! grep -q '^Summary' "$WORK/pjd.txt"; then
            tail -5 "$WORK/pjd.txt" >&2
            fail "pjdfstest did not run (exit $rc)"
        fi
        grep -E 'FAILED|PASSED UNEXPECTEDLY' -A3 "$WORK/pjd.txt" | head -120 >&2
        grep '^Summary' "$WORK/pjd.txt" >&2
        fail "pjdfstest: $(grep -c -E 'FAILED|PASSED UNEXPECTEDLY' "$WORK/pjd.txt") test cases failed (full log $WORK/pjd.txt)"
    fi
    ls -A "$SA" | sort >"$WORK/pjd-after.ls"
    if [ -n "$(comm -13 "$WORK/pjd-before.ls" "$WORK/pjd-after.ls")" ]; then
        fail "files left in the store after pjdfstest removed what it made: $(comm -13 "$WORK/pjd-before.ls" "$WORK/pjd-after.ls" | head -5 | tr '\n' ' ')"
    fi
    local summary ran
    summary=$(grep '^Summary' "$WORK/pjd.txt")
    echo "$summary"
    ran=$(grep -c -E ' (ok|skipped|FAILED|failed as expected|PASSED UNEXPECTEDLY)$' "$WORK/pjd.txt" || true)
    assert_eq "$ran" "$(wc -l <"$sel")" "number of pjdfstest cases run"
    if grep -q ' skipped$' "$WORK/pjd.txt"; then
        grep ' skipped$' -A2 "$WORK/pjd.txt" >&2
        fail "selected pjdfstest cases were skipped (add them to pjdfstest-exclude.txt with a reason, or enable the feature)"
    fi
}

t_store_mount() {
    # --store NAME mounts only that store's directory
    local m2="$STATE/mnt-store-b" id src got
    src=$(data store_mount_src 1M)
    id=$(newid)
    cp "$src" "$SB/$id"
    mkdir -p "$m2"
    local PIDFILE="$STATE/imagefs-store-b.pid"
    do_mount "$m2" --store b || fail "mount --store b failed"
    got=0
    ls -1 "$m2" | grep -qx "$id" && got=1
    [ -e "$m2/a" ] && { do_umount "$m2"; fail "--store b mount shows store a"; }
    if [ $got = 1 ]; then cmp -s "$src" "$m2/$id" || got=2; fi
    do_umount "$m2" || fail "unmounting the --store mount"
    [ $got = 1 ] || fail "--store b mount: image $id missing or wrong bytes (state $got)"
}

t_two_mounts() {
    # DESIGN "several mounts, one backend": an upload in progress on one
    # mount is invisible on the other, a second writer of the same id fails
    # with EEXIST, and the committed image shows up on the other mount.
    local m2="$STATE/mnt-two" id fifo w i e rc=0
    mkdir -p "$m2"
    local PIDFILE="$STATE/imagefs-two.pid"
    do_mount "$m2" || fail "second mount of the same config failed"
    id=$(newid)
    fifo="$WORK/two.fifo"; rm -f "$fifo" "$fifo.ready"; mkfifo "$fifo"
    head -c 3M /dev/urandom >"$WORK/two.src"
    python3 - "$MNT/a/$id" "$fifo" "$WORK/two.src" <<'EOF2' &
import sys
f = open(sys.argv[1], "wb")
f.write(open(sys.argv[3], "rb").read())
f.flush()
open(sys.argv[2] + ".ready", "w").close()
open(sys.argv[2]).read()
f.close()
EOF2
    w=$!
    for i in $(seq 100); do [ -e "$fifo.ready" ] && break; sleep 0.1; done
    if [ ! -e "$fifo.ready" ]; then echo >"$fifo"; do_umount "$m2"; fail "writer did not get going"; fi
    sleep 1.2 # past attr_ttl_ms
    if ls -1A "$m2/a" | grep -q "$id"; then rc=1; echo "FAIL: upload in progress on mount 1 is listed on mount 2" >&2; fi
    e=$(errno_of 'os.stat(a[0])' "$m2/a/$id")
    [ "$e" = ENOENT ] || { rc=1; echo "FAIL: stat on mount 2 of an upload in progress on mount 1: expected ENOENT, got $e" >&2; }
    e=$(errno_of 'os.close(os.open(a[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))' "$m2/a/$id")
    [ "$e" = EEXIST ] || { rc=1; echo "FAIL: O_EXCL create on mount 2 while mount 1 writes the id: expected EEXIST, got $e" >&2; }
    e=$(errno_of 'f = open(a[0], "wb"); f.write(b"second writer"); f.close()' "$m2/a/$id")
    [ "$e" = EEXIST ] || { rc=1; echo "FAIL: second writer (open wb) on mount 2 while mount 1 writes the id: expected EEXIST, got $e" >&2; }
    echo >"$fifo"
    wait $w || { rc=1; echo "FAIL: the first writer failed at close" >&2; }
    for i in $(seq 30); do [ -e "$m2/a/$id" ] && break; sleep 0.2; done
    cmp -s "$WORK/two.src" "$m2/a/$id" || { rc=1; echo "FAIL: committed image on mount 2 missing or wrong bytes" >&2; }
    cmp -s "$WORK/two.src" <(backend cat a "$id") || { rc=1; echo "FAIL: backend object is not the first writer's bytes" >&2; }
    do_umount "$m2" || rc=1
    return $rc
}

t_unlink_elsewhere_while_reading() {
    # A handle on one mount (node) reads on while the image is unlinked on
    # another and gc runs with --older-than 0s, as a local file would:
    # fstat says nlink 0 and the old size, and it must never read wrong
    # bytes: file and rbd keep the version it opened
    # (rbd: the reader watches it, and nothing watched is purged); S3
    # cannot know readers on other nodes, so there ESTALE is allowed.
    local m2="$STATE/mnt-elsewhere" id src out i
    mkdir -p "$m2"
    local PIDFILE="$STATE/imagefs-elsewhere.pid"
    do_mount "$m2" || fail "second mount of the same config failed"
    src=$(data elsewhere_src 40M)
    id=$(newid)
    cp "$src" "$MNT/a/$id"
    for i in $(seq 30); do [ -e "$m2/a/$id" ] && break; sleep 0.2; done
    out=$(python3 - "$m2/a/$id" "$MNT/a/$id" "$src" "$BINARY" "$CFG" <<'EOF2'
import errno, os, subprocess, sys, time
reader_path, other_path, src, binary, cfg = sys.argv[1:]
want = open(src, "rb").read()
f = open(reader_path, "rb")
got = f.read(1 << 20)
os.unlink(other_path)
gc = subprocess.run([binary, "gc", "--older-than", "0s", "--config", cfg],
                    capture_output=True, text=True)
if gc.returncode != 0:
    print("GC-FAILED", gc.stderr.strip()[-300:])
    sys.exit(0)
time.sleep(1.2)  # past attr_ttl_ms: the kernel asks for the attributes again
try:
    st = os.fstat(f.fileno())
    if st.st_nlink != 0 or st.st_size != len(want):
        print("FSTAT nlink %d size %d" % (st.st_nlink, st.st_size))
        sys.exit(0)
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        got += b
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(0)
print("OK" if got == want else "WRONG %d bytes, first difference at %s" % (
    len(got), next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), "end")))
EOF2
)
    do_umount "$m2" || fail "unmounting the second mount"
    case "$STORE_TYPE:$out" in
        *:OK) ;;
        s3:ESTALE) note "s3: the reader on the other mount got ESTALE (allowed)" ;;
        *) fail "reader on another mount after unlink + gc: $out" ;;
    esac
}

t_glance_config_mount() {
    # mount straight from a glance-api.conf (multi-store, enabled_backends)
    if [ "$STORE_TYPE" != file ]; then note "glance-api.conf for $STORE_TYPE: not written yet, nothing checked"; return 0; fi
    local m5="$STATE/mnt-glance" gconf="$WORK/glance-api.conf" id src got
    cat >"$gconf" <<EOF2
[DEFAULT]
enabled_backends = a:file, b:file

[glance_store]
default_backend = a

[a]
filesystem_store_datadir = $(backend_file_datadir a)

[b]
filesystem_store_datadir = $(backend_file_datadir b)
EOF2
    src=$(data glance_conf_src 2M)
    id=$(newid)
    cp "$src" "$SA/$id"
    mkdir -p "$m5"
    local PIDFILE="$STATE/imagefs-glance.pid"
    echo "+ imagefs mount $m5 --glance-config $gconf" >>"$LOG"
    timeout 60 "$BINARY" mount "$m5" --glance-config "$gconf" --pid-file "$PIDFILE" \
        -o "$MOUNT_OPTS" >>"$LOG" 2>&1 || fail "mount --glance-config failed (see $LOG)"
    is_mounted "$m5" || fail "mount --glance-config exited 0 but nothing is mounted"
    got=$(ls -1 "$m5" | tr '\n' ' ')
    local ok=1 why=""
    [ "$got" = "a b " ] || { ok=0; why="root lists '$got', expected 'a b '"; }
    cmp -s "$src" "$m5/a/$id" || { ok=0; why="$why; image $id missing or wrong through the glance-config mount"; }
    do_umount "$m5"
    [ $ok = 1 ] || fail "$why"
}

t_ro_mount() {
    # -o ro: reads work, every write fails with EROFS
    local m3="$STATE/mnt-ro" id src e rc=0
    src=$(data ro_src 1M)
    id=$(newid)
    cp "$src" "$SA/$id"
    mkdir -p "$m3"
    local PIDFILE="$STATE/imagefs-ro.pid" MOUNT_OPTS="ro,$MOUNT_OPTS"
    do_mount "$m3" --store a || fail "mount -o ro --store a failed"
    cmp -s "$src" "$m3/$id" || { rc=1; echo "FAIL: read through the ro mount differs" >&2; }
    e=$(errno_of 'open(a[0], "wb").close()' "$m3/new-$id")
    [ "$e" = EROFS ] || { rc=1; echo "FAIL: create on a ro mount: expected EROFS, got $e" >&2; }
    e=$(errno_of 'open(a[0], "r+b").write(b"x")' "$m3/$id")
    [ "$e" = EROFS ] || { rc=1; echo "FAIL: open r+ on a ro mount: expected EROFS, got $e" >&2; }
    e=$(errno_of 'os.unlink(a[0])' "$m3/$id")
    [ "$e" = EROFS ] || { rc=1; echo "FAIL: unlink on a ro mount: expected EROFS, got $e" >&2; }
    do_umount "$m3" || rc=1
    cmp -s "$src" "$SA/$id" || { rc=1; echo "FAIL: image changed through the ro mount" >&2; }
    return $rc
}

t_sigterm() {
    # SIGTERM: the daemon unmounts and exits (systemd stop)
    local m4="$STATE/mnt-term" pid i
    mkdir -p "$m4"
    local PIDFILE="$STATE/imagefs-term.pid"
    do_mount "$m4" --store b || fail "mount --store b failed"
    pid=$(cat "$PIDFILE") || fail "no pid file"
    ls "$m4" >/dev/null || fail "new mount not usable"
    kill -TERM "$pid"
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"; fusermount3 -uz "$m4" 2>/dev/null
        fail "daemon $pid still running 10 s after SIGTERM"
    fi
    if is_mounted "$m4"; then
        fusermount3 -uz "$m4" 2>/dev/null
        fail "daemon exited on SIGTERM but left $m4 mounted (dead mount)"
    fi
}

t_check_cmd() {
    "$BINARY" check --config "$CFG" >"$WORK/check.out" 2>&1 ||
        { cat "$WORK/check.out" >&2; fail "imagefs check exited non-zero"; }
    cat "$WORK/check.out"
    assert_grep '\ba\b' "$WORK/check.out" "check lists store a"
    assert_grep '\bb\b' "$WORK/check.out" "check lists store b"
    assert_grep "$STORE_TYPE" "$WORK/check.out" "check names the store type"
}

t_rbd_clone_cp() {
    # rbd: cp inside the store is a copy-on-write clone of <src>@snap (constant
    # time: a 10 GiB image in under a second), itself a Glance image; the
    # source then cannot be deleted (EBUSY) while the clone exists.
    if [ "$STORE_TYPE" != rbd ]; then note "rbd only"; return 0; fi
    local p src id cp_id t0 t1 ms info
    p=$(backend_rbd_pool a)
    src=$(data clone_head 4M)
    id=$(newid); cp_id=$(newid)
    rbd_ import --no-progress --order 23 "$src" "$p/$id" >/dev/null
    rbd_ resize --no-progress --size 10G "$p/$id" >/dev/null
    rbd_ snap create "$p/$id@snap" >/dev/null && rbd_ snap protect "$p/$id@snap"
    for i in $(seq 30); do [ -e "$SA/$id" ] && break; sleep 0.2; done
    assert_eq "$(stat -c %s "$SA/$id")" $((10 << 30)) "size of the 10 GiB image"
    t0=$(date +%s%N)
    cp "$SA/$id" "$SA/$cp_id" || fail "cp of the 10 GiB image inside the store"
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    note "cp of 10 GiB inside the store: ${ms} ms"
    [ "$ms" -lt 1000 ] || fail "cp took ${ms} ms: not a clone"
    info=$(rbd_ info --format json "$p/$cp_id")
    python3 -c 'import json,sys; i=json.loads(sys.argv[1]); p=i["parent"]; assert p["image"]==sys.argv[2] and p["snapshot"]=="snap", p' \
        "$info" "$id" || fail "rbd info of the copy shows no parent $id@snap: $info"
    backend exists a "$cp_id" || fail "the copy has no protected snap"
    rbd_ snap ls --format json "$p/$cp_id" | grep -q '"protected":"true"' || fail "the copy's snap is not protected"
    assert_eq "$(stat -c %s "$SA/$cp_id")" $((10 << 30)) "size of the copy"
    cmp -n 4194304 "$src" "$SA/$cp_id" || fail "the copy's first 4 MiB differ"
    cmp -n 4194304 -i 0:$((8 << 30)) /dev/zero "$SA/$cp_id" || fail "the copy is not zeros at 8 GiB"
    local e
    e=$(rm "$SA/$id" 2>&1) && fail "rm of a cloned image succeeded"
    assert_grep "Device or resource busy" <(echo "$e") "rm of a cloned image"
    [ -e "$SA/$id" ] || fail "the source vanished after the refused rm"
    rm "$SA/$cp_id" || fail "rm of the copy"
    rm "$SA/$id" || fail "rm of the source once its clone is gone"
    ! backend exists a "$id" || fail "the source is still in the backend"
}

t_backend_outage() {
    # A server that stops answering (its daemons frozen with SIGSTOP: the
    # hard case, connections open and silent) makes operations fail with
    # EIO within the store's op_timeout_s (each request may be retried, and
    # the kernel retries a failed read-ahead once), never a hang; the
    # daemon lives on, and once the server is back the mount works again
    # without a remount. A write that failed leaves nothing torn: its image
    # is absent, or whole if the server finished it late.
    # The OSD is frozen for 2 x 3 s only: a PG of a single OSD stopped
    # longer than its read lease (16 s) can stay "laggy" after it resumes,
    # its reads blocked until the OSD is marked down (a Ceph matter, seen
    # here after 100 s).
    declare -F "backend_${STORE_TYPE}_server_pids" >/dev/null || { note "no server to stop ($STORE_TYPE)"; return 0; }
    local cfg6="$WORK/outage.toml" src id new out p rc=0 t=5
    [ "$STORE_TYPE" != rbd ] || t=3
    # (globals: the EXIT trap below runs after this function has returned)
    m6="$STATE/mnt-outage" dog=""
    pids=$(backend server_pids | tr '\n' ' ')
    [ -n "${pids// /}" ] || fail "no server PIDs found for $STORE_TYPE"
    for p in $pids; do kill -0 "$p" || fail "server PID $p is not running"; done
    { printf '[mount]\nattr_ttl_ms = 1000\n\n'; backend config_section a; printf 'op_timeout_s = %s\n' $t; } >"$cfg6"
    src=$(data outage_src 64M)
    id=$(newid); new=$(newid)
    cp "$src" "$SA/$id"
    mkdir -p "$m6"
    local PIDFILE="$STATE/imagefs-outage.pid" CFG="$cfg6"
    do_mount "$m6" || fail "mount with op_timeout_s = $t failed"
    local dpid; dpid=$(daemon_pid)
    # Whatever happens, the servers run again: at this test's exit, and
    # after 60 s even if this shell is killed (an OSD stopped for 150 s
    # kills itself when it resumes).
    thaw() { kill -CONT $pids 2>/dev/null || true; }
    trap 'thaw; [ -z "$dog" ] || kill "$dog" 2>/dev/null; do_umount "$m6" >/dev/null 2>&1 || true' EXIT
    (sleep 60; kill -CONT $pids 2>/dev/null) >/dev/null 2>&1 &
    dog=$!
    out=$(python3 - "$m6/a/$id" "$m6/a/$new" "$pids" <<'EOF2'
import errno, os, signal, sys, time
path, new, pids = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split()]
f = os.open(path, os.O_RDONLY)
os.pread(f, 1 << 20, 0)
for p in pids:
    os.kill(p, signal.SIGSTOP)
def timed(what, fn):
    t = time.monotonic()
    try:
        fn()
        e = "OK"
    except OSError as x:
        e = errno.errorcode.get(x.errno, str(x.errno))
    print(f"{what} {e} {time.monotonic() - t:.1f}", flush=True)
def write():
    with open(new, "wb") as w:
        w.write(os.urandom(1 << 20))
# at once, so the test waits for the longer one only
import threading
ts = [threading.Thread(target=timed, args=("read", lambda: os.pread(f, 1 << 20, 48 << 20))),
      threading.Thread(target=timed, args=("write", write))]
try:
    for t in ts:
        t.start()
    for t in ts:
        t.join()
finally:
    for p in pids:
        os.kill(p, signal.SIGCONT)
EOF2
) || { thaw; fail "the outage script failed: $out"; }
    note "$(echo "$out" | tr '\n' ';')"
    local what e secs
    while read -r what e secs; do
        [ "$e" = EIO ] || { rc=1; echo "FAIL: $what while the server is stopped: expected EIO, got $e after $secs s" >&2; }
        # S3 makes 3 attempts per request, and the kernel asks twice for a
        # read whose read-ahead failed: 6 x 5 s and the SDK's backoff.
        [ "${secs%.*}" -lt 50 ] || { rc=1; echo "FAIL: $what took $secs s to fail (op_timeout_s = $t)" >&2; }
    done <<<"$out"
    kill -0 "$dpid" 2>/dev/null || { report_dead_daemon "$m6"; fail "the daemon died during the outage"; }
    # back: new opens read the whole image, byte-exact (the servers may take
    # a few seconds to reconnect)
    local i ok=0
    for i in $(seq 30); do
        if cmp -s "$src" "$m6/a/$id"; then ok=1; break; fi
        sleep 2
    done
    [ $ok = 1 ] || { rc=1; echo "FAIL: the image does not read back byte-exact 60 s after the server came back" >&2; }
    [ $ok = 1 ] && [ "$i" -gt 1 ] && note "reads worked again after $(( (i - 1) * 2 )) s"
    ls "$m6/a" >/dev/null || { rc=1; echo "FAIL: ls of the store after the outage" >&2; }
    head -c 3M "$src" >"$WORK/outage.after"
    cp "$WORK/outage.after" "$m6/a/$new.after" || { rc=1; echo "FAIL: a write after the outage failed" >&2; }
    assert_backend_same "$WORK/outage.after" a "$new.after"
    if [ -e "$m6/a/$new" ]; then
        # the server finished the write after the client gave up on it
        [ "$(stat -c %s "$m6/a/$new")" = $((1 << 20)) ] || { rc=1; echo "FAIL: the failed write left a torn image ($(stat -c %s "$m6/a/$new") bytes)" >&2; }
        note "the failed write was completed by the server after it came back"
    fi
    if [ "$STORE_TYPE" = s3 ]; then
        # shellcheck disable=SC1090
        ( . "$S3_ENV_FILE"; ! grep -qF -- "$S3_SECRET_KEY" "$STATE/daemon-$(basename "$m6").log" ) ||
            { rc=1; echo "FAIL: the secret key is in the daemon's log" >&2; }
    fi
    kill -0 "$dpid" 2>/dev/null || { report_dead_daemon "$m6"; fail "the daemon died after the outage"; }
    return $rc
}

t_kill9_gc() {
    local id keep src w pid i
    src=$(data kill_keep 1M)
    keep=$(newid)
    cp "$src" "$SA/$keep"
    id=$(newid)
    # a slow writer: 8 MiB at once, then 1 MiB every 0.2 s
    python3 - "$SA/$id" <<'EOF' >"$WORK/kill9-writer.out" 2>&1 &
import os, sys, time
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(8 << 20))
    f.flush()
    for i in range(2000):
        f.write(os.urandom(1 << 20))
        f.flush()
        time.sleep(0.2)
EOF
    w=$!
    for i in $(seq 150); do backend leftovers a | grep -q "$id" && break; sleep 0.2; done
    backend leftovers a | grep -q "$id" || { kill $w; fail "no in-progress upload of $id appeared in the backend"; }
    # long enough for an S3 daemon to have published its lease (within
    # 5 s): gc on this host must still see the daemon is gone
    sleep 6
    pid=$(daemon_pid)
    [ -n "$pid" ] || fail "no daemon pid in $PIDFILE"
    kill -9 "$pid"
    note "killed daemon $pid mid-write"
    for i in $(seq 50); do kill -0 $w 2>/dev/null || break; sleep 0.1; done
    kill -9 $w 2>/dev/null || true
    wait $w 2>/dev/null || true
    fusermount3 -u "$MNT" || fail "fusermount3 -u of the dead mount failed"
    ! is_mounted "$MNT" || fail "still mounted after fusermount3 -u"
    do_mount || fail "remount after kill -9 failed"
    [ ! -e "$SA/$id" ] || fail "partial image $id visible after remount (size $(stat -c %s "$SA/$id"))"
    if ls -1A "$SA" | grep -q "$id"; then fail "partial image $id listed after remount"; fi
    ! backend exists a "$id" || fail "backend has a committed object $id for the killed upload"
    backend leftovers a | grep -q "$id" || fail "the killed upload left nothing for gc to find (expected .imagefs-tmp-$id)"
    # gc --dry-run lists without removing. A dead writer's claim can outlive
    # it a little (rbd: its watch on the image, until the OSD's
    # osd_client_watch_timeout, 30 s): until then gc treats it as live.
    for i in $(seq 60); do
        "$BINARY" gc --older-than 0s --dry-run --config "$CFG" >"$WORK/gc-dry.out" 2>&1 ||
            { cat "$WORK/gc-dry.out" >&2; fail "imagefs gc --dry-run exited non-zero"; }
        grep -q "$id" "$WORK/gc-dry.out" && break
        sleep 1
    done
    [ "$i" = 1 ] || note "gc saw the killed writer as gone after ${i} s"
    assert_grep "$id" "$WORK/gc-dry.out" "gc --dry-run output"
    backend leftovers a | grep -q "$id" || fail "gc --dry-run removed the leftover"
    "$BINARY" gc --older-than 0s --config "$CFG" >"$WORK/gc.out" 2>&1 ||
        { cat "$WORK/gc.out" >&2; fail "imagefs gc exited non-zero"; }
    cat "$WORK/gc.out"
    assert_grep "$id" "$WORK/gc.out" "gc output names what it removed"
    ! backend leftovers a | grep -q "$id" || fail "leftover of $id still in the backend after gc"
    assert_backend_same "$src" a "$keep"
    assert_same "$src" "$SA/$keep" "committed image after gc"
}

# ---------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------
setup_env() {
    export STATE MNT CFG LOG PIDFILE WORK STORE_TYPE BINARY SA SB
    export BIG64 BIG64_BYTES BIG256 FSX_OPS BIG_WRITE_MIB
    SA="$MNT/a"; SB="$MNT/b"
}

# internal: run one test in this (fresh) process
if [ "${1:-}" = "--_run-one" ]; then
    set -Eeuo pipefail
    trap 'echo "  command failed (exit $?) at line $LINENO: ${BASH_COMMAND%%$'"'"'\n'"'"'*}" >&2' ERR
    cd "$WORK"
    "t_$2"
    exit 0
fi

STORE_TYPE=file
BINARY=""
KEEP=0
QUICK=0
SELECTED=()
SKIP=()
while [ $# -gt 0 ]; do
    case "$1" in
        --store-type) STORE_TYPE=$2; shift 2 ;;
        --store-type=*) STORE_TYPE=${1#*=}; shift ;;
        --binary) BINARY=$2; shift 2 ;;
        --binary=*) BINARY=${1#*=}; shift ;;
        --quick) QUICK=1; shift ;;
        --keep) KEEP=1; shift ;;
        --list) printf '%s\n' "${ALL_TESTS[@]}"; exit 0 ;;
        --skip) SKIP+=("$2"); shift 2 ;;
        --skip=*) SKIP+=("${1#*=}"); shift ;;
        -h|--help) sed -n '2,19p' "$SELF"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) SELECTED+=("$1"); shift ;;
    esac
done
[ ${#SELECTED[@]} -gt 0 ] || SELECTED=("${ALL_TESTS[@]}")
for t in "${SELECTED[@]}" "${SKIP[@]}"; do
    declare -F "t_$t" >/dev/null || { echo "no such test: $t (see --list)" >&2; exit 2; }
done
if [ ${#SKIP[@]} -gt 0 ]; then
    kept=()
    for t in "${SELECTED[@]}"; do
        case " ${SKIP[*]} " in *" $t "*) echo "skip $t" ;; *) kept+=("$t") ;; esac
    done
    SELECTED=("${kept[@]}")
fi
declare -F "backend_${STORE_TYPE}_setup" >/dev/null ||
    { echo "unsupported store type: $STORE_TYPE" >&2; exit 2; }
if [ -z "$BINARY" ]; then BINARY="${CARGO_TARGET_DIR:-$REPO/target}/release/imagefs"; fi
[ -x "$BINARY" ] || { echo "imagefs binary not found: $BINARY (cargo build --release, or --binary)" >&2; exit 2; }
BINARY="$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")"
for tool in fusermount3 rsync qemu-img qemu-io getfattr python3 fsx pjdfstest-flat; do
    command -v "$tool" >/dev/null || { echo "missing tool $tool: run scripts/install-deps.sh" >&2; exit 2; }
done

# fsx: about 1 op in 14 (close/open, fsync, fdatasync, msync) commits a new
# version; on stores whose commit is a copy-on-write snapshot and name swap
# (rbd: 0.2-1 s each) 100,000 ops would take hours, so they run fewer.
if [ "$STORE_TYPE" = file ]; then fsx_full=50000; fsx_quick=10000; else fsx_full=1500; fsx_quick=1000; fi
if [ $QUICK = 1 ]; then
    BIG64=8M; BIG64_BYTES=$((8 << 20)); BIG256=32M; FSX_OPS=${FSX_OPS:-$fsx_quick}
    BIG_WRITE_MIB=512
else
    BIG64=64M; BIG64_BYTES=$((64 << 20)); BIG256=256M; FSX_OPS=${FSX_OPS:-$fsx_full}
    BIG_WRITE_MIB=8192
fi

STATE=$(mktemp -d "${TMPDIR:-/tmp}/imagefs-fusetests.XXXXXX")
chmod 755 "$STATE"
MNT="$STATE/mnt"; CFG="$STATE/imagefs.toml"; LOG="$STATE/mount.log"
PIDFILE="$STATE/imagefs.pid"; WORK="$STATE/work"
mkdir -p "$MNT" "$WORK" "$STATE/logs"
setup_env

cleanup() {
    do_umount "$MNT" >/dev/null 2>&1 || true
    local m
    for m in "$STATE"/mnt-*; do is_mounted "$m" && fusermount3 -uz "$m"; done
    if [ $KEEP = 1 ]; then
        echo "state kept in $STATE"
    elif [ "${FAILED:-0}" -gt 0 ]; then
        backend teardown >/dev/null 2>&1
        rm -rf "$STATE/data" "$WORK"/*.raw 2>/dev/null
        is_mounted "$MNT" || rmdir "$MNT" 2>/dev/null
        echo "logs kept in $STATE (logs/, mount.log, daemon-*.log)"
    else
        backend teardown >/dev/null 2>&1
        rm -rf "$STATE"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "imagefs fuse-tests: store type $STORE_TYPE, binary $BINARY, state $STATE"
backend setup
write_config
PASSED=0 FAILED=0 FAILED_NAMES=()
if ! do_mount; then
    cat "$LOG" >&2
    FAILED=${#SELECTED[@]}
    echo "${PASSED} passed, ${FAILED} failed"
    exit 1
fi

TEST_TIMEOUT=${TEST_TIMEOUT:-1200}
for t in "${SELECTED[@]}"; do
    if ! is_mounted "$MNT" || ! daemon_alive; then
        echo "  (mount gone or daemon dead before $t: remounting)"
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null
        do_mount || { echo "remount failed"; }
    fi
    t0=$(date +%s)
    timeout -k 10 "$TEST_TIMEOUT" bash "$SELF" --_run-one "$t" >"$STATE/logs/$t.log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        if ! daemon_alive; then
            echo "FAIL $t (${dt}s): the imagefs daemon died during the test"
            report_dead_daemon
            FAILED=$((FAILED + 1)); FAILED_NAMES+=("$t")
        else
            echo "ok   $t (${dt}s)"
            PASSED=$((PASSED + 1))
        fi
    else
        [ $rc -eq 124 ] && echo "  timed out after ${TEST_TIMEOUT}s" >>"$STATE/logs/$t.log"
        echo "FAIL $t (${dt}s)"
        sed 's/^/    /' "$STATE/logs/$t.log" | tail -40
        daemon_alive || report_dead_daemon
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$t")
    fi
done

do_umount || { echo "FAIL unmount at the end"; FAILED=$((FAILED + 1)); FAILED_NAMES+=(unmount); }
[ $FAILED -eq 0 ] || echo "failed: ${FAILED_NAMES[*]}"
echo "${PASSED} passed, ${FAILED} failed"
[ $FAILED -eq 0 ]

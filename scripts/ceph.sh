#!/usr/bin/env bash
# A single-node Ceph cluster on loopback for the RBD and S3 stores (and their
# tests and benchmarks): 1 mon, 1 mgr, 1 osd, optionally RGW (S3 + Swift).
#
#   scripts/ceph.sh up [--rgw] [--memstore]   start (bootstrap on first use)
#   scripts/ceph.sh down [--purge]            stop every daemon by its PID file
#   scripts/ceph.sh status                    what runs, cluster health
#
# Everything lives under one directory, $IMAGEFS_STATE/ceph (default
# /var/tmp/imagefs-backends/ceph):
#   ceph.conf                          point CLI tools at it: CEPH_CONF=... or -c
#   ceph.client.admin.keyring          cephx admin
#   ceph.client.glance.keyring         client.glance: the caps Glance uses
#                                      (mon 'profile rbd', osd/mgr 'profile rbd pool=images')
#   rgw.env                            (with --rgw) S3_ENDPOINT, S3_ACCESS_KEY,
#                                      S3_SECRET_KEY, SWIFT_AUTH_URL, SWIFT_USER, SWIFT_KEY
#   ready / rgw-ready                  exist once all PGs are active+clean / RGW answers
#   run/*.pid, log/*.log               one PID file and one log per daemon
#
# The OSD is bluestore on a sparse file (multi-GiB tests fit on disk);
# --memstore (first start only) keeps data in RAM instead. `up` is
# idempotent: with the cluster running it only checks it (and adds RGW if
# asked); with state left from an earlier run it restarts the daemons on it.
# Exit status is non-zero whenever the cluster (or RGW) is not healthy.
set -euo pipefail

state="${IMAGEFS_STATE:-/var/tmp/imagefs-backends}"
case $state in /*) ;; *) state="$PWD/$state" ;; esac
dir="$state/ceph"
conf="$dir/ceph.conf"
rgw_port="${IMAGEFS_RGW_PORT:-7480}"
mon_v2=3300
mon_v1=6789
osd_size=$((48 * 1024 * 1024 * 1024))
start_timeout=120

log() { printf 'ceph.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
ceph_() { timeout 30 ceph -c "$conf" "$@"; }

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

pid_alive() { # pid_alive PIDFILE: the daemon it names runs. A pid left by a
    # daemon that is gone may belong to another process or thread since
    # (kill -0 accepts thread ids): only a process started with this
    # cluster's config counts.
    local pid
    [ -f "$1" ] && pid=$(cat "$1") && [ -n "$pid" ] || return 1
    awk -v p="$pid" '$1 == "Tgid:" { t = $2 } END { exit t != p }' "/proc/$pid/status" 2>/dev/null ||
        return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " $conf "
}

write_conf() { # write_conf FSID OBJECTSTORE
    cat >"$conf" <<EOF
# Written by scripts/ceph.sh: a one-node test cluster on loopback.
[global]
fsid = $1
mon host = [v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
keyring = $dir/\$cluster.\$name.keyring
run dir = $dir/run
admin socket = $dir/run/\$cluster-\$name.asok
pid file = $dir/run/\$type.\$id.pid
log file = $dir/log/\$cluster-\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 2
osd crush chooseleaf type = 0
paxos propose interval = 0.1
mgr stats period = 1
# Clients give up instead of hanging when the cluster is gone.
rados mon op timeout = 30
rados osd op timeout = 30
client mount timeout = 30

[mon]
mon data = $dir/mon-\$id
keyring = $dir/ceph.mon.keyring

[mgr]
mgr data = $dir/mgr-\$id

[osd]
osd data = $dir/osd-\$id
osd objectstore = $2
bluestore block create = true
bluestore block size = $osd_size
osd memory target = 1073741824
# A client that died (kill -9) holds its watches on RBD images until this
# expires; gc treats a watched image as a live writer's. 10 s instead of
# 30 s keeps the kill -9 tests short; live clients ping well within it.
osd client watch timeout = 10

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/rgw-\$id
rgw enable apis = s3, swift, swift_auth, admin
rgw swift url prefix = swift
EOF
}

bootstrap() { # bootstrap OBJECTSTORE
    log "bootstrapping a new cluster in $dir ($1)"
    rm -rf "$dir"
    mkdir -p "$dir/run" "$dir/log"
    local fsid
    fsid=$(uuidgen)
    write_conf "$fsid" "$1"

    ceph-authtool --create-keyring "$dir/ceph.mon.keyring" --gen-key -n mon. \
        --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$dir/ceph.client.admin.keyring" --gen-key \
        -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' \
        --cap mgr 'allow *' >/dev/null
    chmod 600 "$dir"/*.keyring
    ceph-authtool "$dir/ceph.mon.keyring" --import-keyring "$dir/ceph.client.admin.keyring" \
        >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]" \
        --fsid "$fsid" "$dir/monmap" >/dev/null
    mkdir -p "$dir/mon-a"
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/ceph.mon.keyring"
    ceph-mon -c "$conf" -i a

    mkdir -p "$dir/mgr-x"
    ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        >"$dir/ceph.mgr.x.keyring"
    ceph-mgr -c "$conf" -i x

    local uuid secret id
    uuid=$(uuidgen)
    secret=$(ceph-authtool --gen-print-key)
    id=$(printf '{"cephx_secret": "%s"}' "$secret" |
        ceph_ osd new "$uuid" -i - -n client.admin)
    mkdir -p "$dir/osd-$id"
    ceph-authtool --create-keyring "$dir/ceph.osd.$id.keyring" --name "osd.$id" \
        --add-key "$secret" >/dev/null
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" 2>>"$dir/log/mkfs.log" ||
        die "ceph-osd --mkfs failed (see $dir/log/mkfs.log)"
    ceph-osd -c "$conf" -i "$id"

    ceph_ osd pool create images 32 32 >/dev/null 2>&1
    ceph_ osd pool application enable images rbd >/dev/null 2>&1
    timeout 60 rbd -c "$conf" pool init images
    ceph_ auth get-or-create client.glance mon 'profile rbd' \
        osd 'profile rbd pool=images' mgr 'profile rbd pool=images' \
        >"$dir/ceph.client.glance.keyring"
    chmod 600 "$dir"/*.keyring
}

# Starts whichever daemon of an existing cluster is not running.
start_daemons() {
    mkdir -p "$dir/run" "$dir/log"
    pid_alive "$dir/run/mon.a.pid" || ceph-mon -c "$conf" -i a
    pid_alive "$dir/run/mgr.x.pid" || ceph-mgr -c "$conf" -i x
    local d id
    for d in "$dir"/osd-*; do
        id=${d##*/osd-}
        pid_alive "$dir/run/osd.$id.pid" || ceph-osd -c "$conf" -i "$id"
    done
}

# Waits until health answers and every PG is active+clean.
wait_clean() {
    local deadline=$(($(date +%s) + start_timeout)) stat=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        # `ceph pg stat` hangs without a mgr: timeout guards it.
        stat=$(timeout 10 ceph -c "$conf" pg stat 2>/dev/null || true)
        if [[ "$stat" =~ ^([0-9]+)\ pgs:\ ([0-9]+)\ active\+clean\; ]] &&
            [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
            return 0
        fi
        sleep 1
    done
    die "PGs not active+clean after ${start_timeout}s: ${stat:-no answer} (logs: $dir/log)"
}

rgw_up() {
    local pools p
    pools=(.rgw.root default.rgw.control default.rgw.meta default.rgw.log
           default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)
    if [ ! -f "$dir/ceph.client.rgw.a.keyring" ]; then
        # Pre-created pools: RGW answers in about a second instead of creating
        # them one by one at its first start.
        for p in "${pools[@]}"; do
            ceph_ osd pool create "$p" 8 8 >/dev/null
            ceph_ osd pool application enable "$p" rgw >/dev/null
        done
        ceph_ auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
            >"$dir/ceph.client.rgw.a.keyring"
        chmod 600 "$dir/ceph.client.rgw.a.keyring"
        wait_clean
    fi
    mkdir -p "$dir/rgw-a"
    pid_alive "$dir/run/client.rgw.a.pid" || radosgw -c "$conf" -n client.rgw.a
    local deadline=$(($(date +%s) + start_timeout))
    until curl -fs -o /dev/null "http://127.0.0.1:$rgw_port/"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "RGW not answering on 127.0.0.1:$rgw_port (see $dir/log)"
        pid_alive "$dir/run/client.rgw.a.pid" || die "radosgw exited (see $dir/log/ceph-client.rgw.a.log)"
        sleep 0.5
    done
    if [ ! -f "$dir/rgw.env" ]; then
        local access secret swift_key
        access=$(rand_hex 10 | tr a-f A-F)
        secret=$(rand_hex 20)
        swift_key=$(rand_hex 20)
        timeout 60 radosgw-admin -c "$conf" user create --uid=imagefs --display-name=imagefs \
            --access-key="$access" --secret-key="$secret" >/dev/null
        timeout 60 radosgw-admin -c "$conf" subuser create --uid=imagefs --subuser=imagefs:swift \
            --access=full --key-type=swift --secret-key="$swift_key" >/dev/null
        umask 077
        cat >"$dir/rgw.env.tmp" <<EOF
S3_ENDPOINT=http://127.0.0.1:$rgw_port
S3_ACCESS_KEY=$access
S3_SECRET_KEY=$secret
SWIFT_AUTH_URL=http://127.0.0.1:$rgw_port/auth/1.0
SWIFT_USER=imagefs:swift
SWIFT_KEY=$swift_key
EOF
        mv "$dir/rgw.env.tmp" "$dir/rgw.env"
    fi
    touch "$dir/rgw-ready"
    log "RGW ready on http://127.0.0.1:$rgw_port (credentials: $dir/rgw.env)"
}

cmd_up() {
    local rgw=0 store=bluestore
    for a in "$@"; do
        case "$a" in
            --rgw) rgw=1 ;;
            --memstore) store=memstore ;;
            *) die "unknown argument to up: $a" ;;
        esac
    done
    for b in ceph-mon ceph-mgr ceph-osd ceph rbd monmaptool ceph-authtool uuidgen curl; do
        command -v "$b" >/dev/null || die "$b not found: run scripts/install-deps.sh"
    done
    [ "$rgw" = 0 ] || command -v radosgw >/dev/null || die "radosgw not found: run scripts/install-deps.sh"
    # the daemons keep the directory they start in: not a checkout that may
    # be deleted while they run
    cd /
    if [ -f "$dir/ceph.client.glance.keyring" ] && [ -d "$dir/mon-a" ]; then
        start_daemons
    else
        bootstrap "$store"
    fi
    wait_clean
    touch "$dir/ready"
    log "cluster ready (conf: $conf)"
    [ "$rgw" = 0 ] || rgw_up
}

cmd_down() {
    local purge=0 f pid
    [ "${1:-}" != "--purge" ] || purge=1
    rm -f "$dir/ready" "$dir/rgw-ready"
    # RGW first, then OSD, mgr, mon: clients before the servers they need.
    for f in "$dir"/run/client.rgw.*.pid "$dir"/run/osd.*.pid "$dir"/run/mgr.*.pid \
        "$dir"/run/mon.*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if pid_alive "$f"; then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then
                log "$(basename "$f" .pid) ignored SIGTERM for 20s: SIGKILL"
                kill -9 "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$f"
    done
    [ "$purge" = 0 ] || rm -rf "$dir"
    log "stopped"
}

cmd_status() {
    local f
    for f in "$dir"/run/*.pid; do
        [ -f "$f" ] || continue
        if pid_alive "$f"; then
            echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
        else
            echo "$(basename "$f" .pid): not running"
        fi
    done
    [ -f "$conf" ] || { echo "no cluster in $dir"; return 1; }
    timeout 10 ceph -c "$conf" -s || { echo "cluster not answering"; return 1; }
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    status) cmd_status ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
esac

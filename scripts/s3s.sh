#!/usr/bin/env bash
# s3s-fs: a second, independent S3 server for the S3 store's tests (Ceph RGW
# is the first). It keeps objects as plain files and checks SigV4.
#
#   scripts/s3s.sh up      start (idempotent: a running server is only checked)
#   scripts/s3s.sh down    stop it by its PID file
#   scripts/s3s.sh status
#
# State under $IMAGEFS_STATE/s3s (default /var/tmp/imagefs-backends/s3s):
#   data/        the objects (one directory per bucket)
#   s3s.env      S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY (fixed test keys)
#   s3s.pid, s3s.log, ready (exists while the server answers)
# The binary comes from scripts/install-deps.sh ($IMAGEFS_TOOLS/bin/s3s-fs).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${IMAGEFS_TOOLS:-$repo/fuse-tests/.tools}"
case $tools in /*) ;; *) tools="$PWD/$tools" ;; esac
state="${IMAGEFS_STATE:-/var/tmp/imagefs-backends}"
case $state in /*) ;; *) state="$PWD/$state" ;; esac
dir="$state/s3s"
port="${IMAGEFS_S3S_PORT:-8014}"
pidfile="$dir/s3s.pid"
access_key="imagefs-test-access"
secret_key="imagefs-test-secret-not-for-production"

log() { printf 's3s.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { # the s3s-fs started here runs (not a process or thread that got its pid since)
    local pid
    [ -f "$pidfile" ] && pid=$(cat "$pidfile") && [ -n "$pid" ] || return 1
    awk -v p="$pid" '$1 == "Tgid:" { t = $2 } END { exit t != p }' "/proc/$pid/status" 2>/dev/null ||
        return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " $dir/data "
}

answers() { # any HTTP answer (403 without a signature) means it is up
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/" || true)
    [ -n "$code" ] && [ "$code" != 000 ]
}

up() {
    mkdir -p "$dir/data"
    cat >"$dir/s3s.env" <<EOT
S3_ENDPOINT=http://127.0.0.1:$port
S3_ACCESS_KEY=$access_key
S3_SECRET_KEY=$secret_key
EOT
    if alive; then
        answers || die "s3s-fs (pid $(cat "$pidfile")) does not answer on port $port"
        touch "$dir/ready"
        log "running (pid $(cat "$pidfile")), http://127.0.0.1:$port"
        return
    fi
    rm -f "$dir/ready"
    local bin="$tools/bin/s3s-fs"
    [ -x "$bin" ] || die "$bin is missing: run scripts/install-deps.sh"
    # run from the state directory, not from whichever checkout started it
    # (s3s-fs fails its requests once its working directory is deleted)
    (cd "$dir" && exec nohup "$bin" --host 127.0.0.1 --port "$port" \
        --access-key "$access_key" --secret-key "$secret_key" \
        "$dir/data" >>"$dir/s3s.log" 2>&1) &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
        if answers; then
            touch "$dir/ready"
            log "started (pid $(cat "$pidfile")), http://127.0.0.1:$port"
            return
        fi
        alive || die "s3s-fs exited; see $dir/s3s.log"
        sleep 0.2
    done
    die "s3s-fs does not answer after 10 s; see $dir/s3s.log"
}

down() {
    rm -f "$dir/ready"
    if alive; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        log "stopped (pid $pid)"
    else
        log "not running"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) if alive && answers; then log "running (pid $(cat "$pidfile"))"; else log "not running"; exit 1; fi ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
esac

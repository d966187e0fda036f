#!/usr/bin/env bash
# Install what imagefs and its FUSE test harness (fuse-tests/) need.
# Idempotent: apt-get runs only when a package is missing (and `apt-get update`
# only then); the cargo tools are installed only when their binary is absent.
#
#   scripts/install-deps.sh            # apt packages + fsx + pjdfstest
#   scripts/install-deps.sh --no-cargo # apt packages only
#
# Cargo tools go to $IMAGEFS_TOOLS (default: <repo>/fuse-tests/.tools, ignored by
# fuse-tests/.gitignore), binaries in
# $IMAGEFS_TOOLS/bin. fuse-tests/run.sh looks there.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${IMAGEFS_TOOLS:-$repo/fuse-tests/.tools}"
with_cargo=1
for a in "$@"; do
    case "$a" in
        --no-cargo) with_cargo=0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

# Cargo tools, pinned. crate:binary:version[:features]
#   s3s-fs: the second S3 server of the S3 store's tests (scripts/s3s.sh);
#   0.14.1 is the last release that builds with rustc 1.9x.
# They need nothing from apt, so they build (4-5 minutes on 2 cores) while
# apt-get runs; their output is shown once they are done.
install_cargo_tools() {
    cargo_tools=(
        "fsx:fsx:0.3.2"
        "s3s-fs:s3s-fs:0.14.1:binary"
    )
    for t in "${cargo_tools[@]}"; do
        IFS=: read -r crate bin ver features <<<"$t"
        if [ -x "$tools/bin/$bin" ]; then
            echo "install-deps: $bin present ($tools/bin/$bin)"
            continue
        fi
        echo "install-deps: cargo install $crate@$ver into $tools"
        cargo install --locked --root "$tools" --version "$ver" ${features:+--features "$features"} "$crate"
    done
}
cargo_pid=""
tmp=""
cleanup() { # on every exit: a build still running (apt-get failed) is stopped
    if [ -n "$cargo_pid" ]; then
        kill $(ps -o pid= --ppid "$cargo_pid" 2>/dev/null) "$cargo_pid" 2>/dev/null || true
        rm -f "$cargo_log"
    fi
    if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
if [ "$with_cargo" = 1 ]; then
    cargo_log=$(mktemp)
    install_cargo_tools >"$cargo_log" 2>&1 &
    cargo_pid=$!
fi

# Debian packages:
#   fuse3, libfuse3-dev, pkg-config : mounting (fusermount3) and building fuser
#   libssl-dev : the openssl crate (checksums through libcrypto)
#   rsync, qemu-utils, attr, pv, coreutils, python3, util-linux, procps,
#   diffutils, psmisc : the tools the tests drive
#   rclone : peer filesystem for benchmarks
#   patch : applies fuse-tests/pjdfstest-flat.patch
#   ceph-mon ceph-mgr ceph-osd radosgw ceph-common uuid-runtime curl :
#       the test cluster of scripts/ceph.sh (RBD, and RGW for S3/Swift)
#   librados-dev librbd-dev : linking the RBD store
#   rbd-fuse s3fs : peer filesystems for benchmarks
pkgs=(fuse3 libfuse3-dev pkg-config libssl-dev rsync qemu-utils attr rclone pv coreutils
      python3 util-linux procps diffutils psmisc patch
      ceph-mon ceph-mgr ceph-osd radosgw ceph-common uuid-runtime curl librados-dev librbd-dev
      rbd-fuse s3fs)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${pkgs[@]}"; do
    # python3 may come from pyenv rather than Debian: accept any python3.
    if [ "$p" = python3 ] && command -v python3 >/dev/null; then continue; fi
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-deps: apt packages present"
fi

# boto3 (pip): the S3 store's interop tests write and read objects with it,
# as Glance's own S3 driver does.
if ! python3 -c 'import boto3' 2>/dev/null; then
    echo "install-deps: pip install boto3"
    python3 -m pip install --quiet boto3
else
    echo "install-deps: boto3 present"
fi

# FUSE needs /dev/fuse; allow_other needs user_allow_other in /etc/fuse.conf
# (only matters when not root, harmless otherwise).
if [ ! -e /dev/fuse ]; then
    echo "install-deps: warning: /dev/fuse is missing; FUSE mounts will fail" >&2
fi
if [ -w /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
    echo user_allow_other >> /etc/fuse.conf
fi

[ "$with_cargo" = 1 ] || exit 0

cargo_done() {
    local rc=0
    wait "$cargo_pid" || rc=$?
    cargo_pid=""
    cat "$cargo_log"
    rm -f "$cargo_log"
    [ "$rc" = 0 ] || { echo "install-deps: installing the cargo tools failed (exit $rc)" >&2; exit 1; }
}

# pjdfstest-flat: the same pjdfstest, patched (fuse-tests/pjdfstest-flat.patch)
# so that with PJDFSTEST_FLAT=1 it runs every test case directly in the -p
# directory instead of in a new subdirectory per case: an imagefs store has no
# subdirectories. The test cases themselves are unchanged.
if [ -x "$tools/bin/pjdfstest-flat" ]; then
    echo "install-deps: pjdfstest-flat present ($tools/bin/pjdfstest-flat)"
else
    find_src() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/pjdfstest-0.2.2 2>/dev/null | head -1 || true; }
    src=$(find_src)
    if [ -z "$src" ]; then
        # Download and unpack the crate without building it: `cargo fetch` of
        # a throw-away package that depends on it.
        fetch=$(mktemp -d)
        mkdir "$fetch/src" && echo 'fn main() {}' >"$fetch/src/main.rs"
        printf '[package]\nname = "fetch-pjdfstest"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\npjdfstest = "=0.2.2"\n' \
            >"$fetch/Cargo.toml"
        (cd "$fetch" && cargo fetch --quiet)
        rm -rf "$fetch"
        src=$(find_src)
    fi
    [ -n "$src" ] || { echo "install-deps: cannot find the pjdfstest-0.2.2 source" >&2; exit 1; }
    tmp=$(mktemp -d)
    cp -r "$src" "$tmp/pjdfstest"
    (cd "$tmp/pjdfstest" && patch -s -p1 <"$repo/fuse-tests/pjdfstest-flat.patch")
    echo "install-deps: cargo install pjdfstest-flat (patched pjdfstest 0.2.2) into $tools/pjdfstest-flat"
    cargo install --locked --path "$tmp/pjdfstest" --root "$tools/pjdfstest-flat"
    mkdir -p "$tools/bin"
    ln -sf ../pjdfstest-flat/bin/pjdfstest "$tools/bin/pjdfstest-flat"
fi
cargo_done

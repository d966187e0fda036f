#!/usr/bin/env bash
# The full test command: installs everything, starts the real backends the
# tests need, and runs every test: format and lint, unit tests, the store
# conformance suite, and the FUSE tests driving real tools against the
# release binary. Ends with a line "N passed, N failed". CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n==== %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }

step "install dependencies"
bash scripts/install-deps.sh

# Real backends: the file store needs none (a local directory); the S3 store
# runs on RGW and on s3s-fs. A backend
# that fails to start fails this command (set -e), never a skip.
step "start Ceph (mon, mgr, osd, RGW)"
bash scripts/ceph.sh up --rgw

step "start s3s-fs (the second S3 server)"
bash scripts/s3s.sh up

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --release --locked --all-targets -- -D warnings

step "build (release)"
cargo build --release --locked

step "unit tests and store conformance"
cargo test --release --locked 2>&1 | tee /tmp/imagefs-cargo-test.log
unit_passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' /tmp/imagefs-cargo-test.log)
unit_failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' /tmp/imagefs-cargo-test.log)

# fuse_tests TYPE [ARGS...]: the FUSE tests on stores of TYPE (ARGS go to
# run.sh); adds to fuse_passed/failed.
fuse_passed=0; fuse_failed=0
fuse_tests() {
    local log="/tmp/imagefs-fuse-tests-$1.log" rc line p f
    set +e
    bash fuse-tests/run.sh --store-type "$@" --binary target/release/imagefs 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    p=$(echo "${line:-0 passed, 1 failed}" | awk '{print $1}')
    f=$(echo "${line:-0 passed, 1 failed}" | awk '{print $3}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    fuse_passed=$((fuse_passed + p)); fuse_failed=$((fuse_failed + f))
}

step "FUSE tests (file store)"
fuse_tests file

step "FUSE tests (rbd store, on the Ceph cluster)"
fuse_tests rbd

step "FUSE tests (s3 store, on RGW)"
fuse_tests s3

step "done"
echo "unit+conformance: $unit_passed passed, $unit_failed failed; fuse-tests: $fuse_passed passed, $fuse_failed failed"
echo "$((unit_passed + fuse_passed)) passed, $((unit_failed + fuse_failed)) failed"
[ "$((unit_failed + fuse_failed))" -eq 0 ]

#!/usr/bin/env bash
# Ember's whole test suite, as README.md documents and .ci/run runs it:
# formatting, lints, unit tests and integration tests. Integration tests boot tiny guests on
# /dev/kvm directly and real Linux guests either directly (where /dev/kvm can run Linux) or in
# the nested-KVM box (resources/box/box.sh), which the tests start and stop themselves.
# Installs what it needs (Debian packages, guest kernel and initramfs) on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EMBER_LOG_TAG=test.sh
# shellcheck source=guest/lib.sh
. resources/guest/lib.sh

ember_need gcc=gcc ld=binutils iasl=acpica-tools unshare=util-linux timeout=coreutils ip=iproute2 \
    /usr/lib/x86_64-linux-gnu/libc.a=libc6-dev depmod=kmod mkfs.ext4=e2fsprogs debugfs=e2fsprogs
command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"

ember_log "building guest images"
resources/guest/build.sh
# The minimal microVM kernel (virtio built in); a few minutes the first time,
# then only its checks (build/kernel/stamp).
resources/kernel/build.sh
if resources/box/box.sh need; then
    ember_log "/dev/kvm here cannot run Linux guests: preparing the nested-KVM box"
    resources/box/box.sh build
fi

ember_log "cargo fmt --check"
cargo fmt --all --check
ember_log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
ember_log "cargo test"
cargo test --workspace

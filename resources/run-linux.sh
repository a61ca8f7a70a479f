#!/usr/bin/env bash
# Builds Ember and boots a real Linux guest (Debian's cloud kernel with the busybox test
# initramfs, 2 vCPUs, 256 MiB), showing its console. Extra arguments go to `ember run` and
# override the defaults (e.g. --cmdline '... ember.test=shell' for an interactive shell).
# Where /dev/kvm cannot run Linux (software KVM such as PVM), it runs inside the nested-KVM
# box instead (resources/box/box.sh run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EMBER_LOG_TAG=run-linux.sh
# shellcheck source=guest/lib.sh
. resources/guest/lib.sh

command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"
cargo build --release --quiet
resources/guest/build.sh
cmd=(./target/release/ember run --kernel build/guest/vmlinuz --initrd build/guest/initramfs.cpio.gz
    --cpus 2 --memory 256M "$@")
if resources/box/box.sh need; then
    ember_log "/dev/kvm here cannot run Linux guests: booting inside the nested-KVM box"
    exec resources/box/box.sh run -- "${cmd[@]}"
fi
exec "${cmd[@]}"

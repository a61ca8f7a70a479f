#!/usr/bin/env bash
# rootfs.sh OUT.ext4 [SIZE_MIB]: write an ext4 root file system image for the
# Ember test guest (default 32 MiB, sparse), without mounting anything
# (mkfs.ext4 -d). It holds static busybox with its applet links, the test
# guest's init (resources/guest/init) as /init and /sbin/init, /bin/ember-wait,
# empty /proc /sys /dev /tmp, and the marker /etc/ember-rootfs by which /init
# knows it runs from a disk (it prints EMBER-ROOTFS-INIT and does not switch
# root again).
#
# Boot it as a virtio block device with root=/dev/vda (add rw to write to it):
# with the Debian kernel through build/guest/initramfs.cpio.gz, whose /init
# loads virtio_blk, mounts the disk and switches to it; with the microVM kernel
# (resources/kernel/build.sh) with or without that initramfs.
#
# Each run writes a fresh image (a fraction of a second), so a test can reset
# a disk that an earlier boot wrote to; OUT is replaced atomically.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMBER_LOG_TAG=guest/rootfs.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

(($# >= 1 && $# <= 2)) || ember_die "usage: rootfs.sh OUT.ext4 [SIZE_MIB]"
out=$1
size=${2:-32}
if ! [[ $size =~ ^[0-9]+$ ]] || ((size < 8)); then
    ember_die "SIZE_MIB must be a whole number >= 8, got '$size'"
fi

ember_need mkfs.ext4=e2fsprogs busybox=busybox-static file=file
[[ -x /bin/busybox ]] || ember_need /bin/busybox=busybox-static
file -b /bin/busybox | grep -q 'statically linked' ||
    ember_die "/bin/busybox is not statically linked (install busybox-static instead of busybox)"

dir=$(dirname "$out")
mkdir -p "$dir"
stage=$(mktemp -d "${TMPDIR:-/tmp}/ember-rootfs.XXXXXX")
tmp=$out.tmp.$$
trap 'rm -rf "$stage" "$tmp"' EXIT

ember_guest_userland "$stage"
# busybox --list-full makes /sbin/init a link to busybox's own init.
rm -f "$stage/sbin/init"
install -m 0755 "$EMBER_GUEST_SRC/init" "$stage/sbin/init"
printf 'Ember test guest root file system (resources/guest/rootfs.sh)\n' >"$stage/etc/ember-rootfs"

rm -f "$tmp"
truncate -s "${size}M" "$tmp"
# 4 KiB blocks (mke2fs would pick 1 KiB ones for so small a file system).
if ! log=$(mkfs.ext4 -q -F -b 4096 -L ember-root -E root_owner=0:0 -d "$stage" "$tmp" 2>&1); then
    printf '%s\n' "$log" >&2
    ember_die "mkfs.ext4 -d $stage $tmp failed"
fi
mv -f "$tmp" "$out"

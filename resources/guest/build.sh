#!/usr/bin/env bash
# Build the Ember test guest into build/guest/ (or $EMBER_GUEST_DIR):
#   vmlinuz            Debian bookworm cloud kernel (bzImage)
#   vmlinux            the ELF kernel unpacked from vmlinuz
#   vmlinux.pvh        PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY) or "none"
#   kernel-version     kernel release string, e.g. 6.1.0-56-cloud-amd64
#   kernel-pkg/        the extracted kernel package (boot/, lib/modules/<ver>/)
#   initramfs.cpio.gz  busybox initramfs running resources/guest/init
# Idempotent: finished steps are skipped. EMBER_REFRESH_KERNEL=1 re-resolves
# the kernel package version through apt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMBER_LOG_TAG=guest/build.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

OUT=${EMBER_GUEST_DIR:-$EMBER_ROOT/build/guest}
KERNEL_META=${EMBER_GUEST_KERNEL_META:-linux-image-cloud-amd64}

did=
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 || ember_die "cannot lock $OUT/.lock"

ember_need busybox=busybox-static cpio=cpio lz4=lz4 file=file readelf=binutils \
    gzip=gzip flock=util-linux
[[ -x /bin/busybox ]] || ember_need /bin/busybox=busybox-static
file -b /bin/busybox | grep -q 'statically linked' ||
    ember_die "/bin/busybox is not statically linked (install busybox-static instead of busybox)"

# --- kernel ------------------------------------------------------------------
KVER=$(ember_fetch_kernel "$KERNEL_META" "$OUT/kernel-pkg")
KSRC=$OUT/kernel-pkg/boot/vmlinuz-$KVER
if [[ ! -f $OUT/vmlinuz || ! -f $OUT/kernel-version || $(<"$OUT/kernel-version") != "$KVER" ]] ||
    ! cmp -s "$KSRC" "$OUT/vmlinuz"; then
    did=1
    cp "$KSRC" "$OUT/vmlinuz.tmp"
    mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
    printf '%s\n' "$KVER" >"$OUT/kernel-version"
    rm -f "$OUT/vmlinux" "$OUT/vmlinux.pvh"
fi

# --- vmlinux: unpack the compressed payload of the bzImage --------------------
# (ember_extract_vmlinux in lib.sh: the Debian cloud kernel's payload is LZ4,
# legacy frame format, magic 02 21 4c 18.)
if [[ ! -f $OUT/vmlinux || $OUT/vmlinux -ot $OUT/vmlinuz ]]; then
    did=1
    ember_log "unpacking vmlinux from vmlinuz"
    ember_extract_vmlinux "$OUT/vmlinuz" "$OUT/vmlinux"
    file -b "$OUT/vmlinux" | grep -q '^ELF 64-bit LSB executable, x86-64' ||
        ember_die "$OUT/vmlinux is not an x86-64 ELF executable: $(file -b "$OUT/vmlinux")"
    rm -f "$OUT/vmlinux.pvh"
fi

if [[ ! -f $OUT/vmlinux.pvh ]]; then
    did=1
    pvh=$(ember_pvh_entry "$OUT/vmlinux")
    printf '%s\n' "${pvh:-none}" >"$OUT/vmlinux.pvh"
fi

# --- initramfs -----------------------------------------------------------------
INIT=$HERE/init
stamp=$(ember_fingerprint "$INIT" /bin/busybox "$HERE/build.sh" initramfs-v1)
if [[ ! -f $OUT/initramfs.cpio.gz || ! -f $OUT/initramfs.stamp || $(<"$OUT/initramfs.stamp") != "$stamp" ]]; then
    did=1
    ember_log "building initramfs.cpio.gz"
    stage=$(mktemp -d "$OUT/.initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
    cp /bin/busybox "$stage/bin/busybox"
    while read -r applet; do
        [[ -e $stage/$applet ]] && continue
        ln -s /bin/busybox "$stage/$applet"
    done < <(/bin/busybox --list-full)
    install -m 0755 "$INIT" "$stage/init"
    # Without root the console node is skipped; /init reopens it from devtmpfs.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9 -n >"$OUT/initramfs.cpio.gz.tmp"
    mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
    printf '%s\n' "$stamp" >"$OUT/initramfs.stamp"
    rm -rf "$stage"
    trap - EXIT
fi

if [[ -n $did || -t 2 ]]; then
    ember_log "ok: kernel $KVER, PVH entry $(<"$OUT/vmlinux.pvh"), outputs in $OUT"
fi

#!/usr/bin/env bash
# Build the Ember test guest into build/guest/ (or $EMBER_GUEST_DIR):
#   vmlinuz            Debian bookworm cloud kernel (bzImage)
#   vmlinux            the ELF kernel unpacked from vmlinuz
#   vmlinux.pvh        PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY) or "none"
#   kernel-version     kernel release string, e.g. 6.1.0-56-cloud-amd64
#   kernel-pkg/        the extracted kernel package (boot/, lib/modules/<ver>/)
#   initramfs.cpio.gz  busybox initramfs running resources/guest/init, with the
#                      kernel modules in GUEST_MODULES (and their dependencies)
#                      and /bin/blkbench (resources/guest/blkbench.c) and
#                      /bin/ember-stream (resources/guest/stream.c) and
#                      /bin/ember-mark (resources/guest/mark.c, boot timer)
#   ember-stream       the same static stream tool, for the host side of tests
# Idempotent: finished steps are skipped. EMBER_REFRESH_KERNEL=1 re-resolves
# the kernel package version through apt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMBER_LOG_TAG=guest/build.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

OUT=${EMBER_GUEST_DIR:-$EMBER_ROOT/build/guest}
KERNEL_META=${EMBER_GUEST_KERNEL_META:-linux-image-cloud-amd64}

# Kernel modules the initramfs carries for the Debian kernel, in the order
# /init loads them (modprobe, so dependencies come along: virtio, virtio_ring,
# failover, ...). Names that the kernel has built in (=y, modules.builtin) are
# skipped: in 6.1 cloud-amd64 that is rng_core (hw_random) and ext4 (with
# jbd2, mbcache, crc16, crc32c_generic). crc32c_intel is the SSE4.2 crc32c
# for ext4's metadata checksums.
GUEST_MODULES=(virtio_mmio virtio_blk rng_core virtio_rng virtio_net vsock
    vmw_vsock_virtio_transport ext4 crc32c_intel)

did=
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 || ember_die "cannot lock $OUT/.lock"

ember_need busybox=busybox-static cpio=cpio lz4=lz4 file=file readelf=binutils \
    gzip=gzip flock=util-linux depmod=kmod gcc=gcc \
    /usr/lib/x86_64-linux-gnu/libc.a=libc6-dev xz=xz-utils zstd=zstd
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
# stage_modules STAGE: copy GUEST_MODULES and their dependencies (per the
# package's modules.dep, made with depmod -n since the package ships none) to
# STAGE/lib/modules/$KVER, uncompressed (busybox modprobe/insmod read only
# plain .ko files), regenerate the index files busybox modprobe reads
# (modules.dep, .alias, .symbols, .builtin) with depmod, and write the names to
# load to STAGE/etc/ember-modules.
stage_modules() {
    local stage=$1 pkgdir=$OUT/kernel-pkg/lib/modules/$KVER line p n d m
    local dst=$stage/lib/modules/$KVER
    local -A path_of=() deps_of=() builtin=() seen=()
    local -a order=() load=() skipped=()
    [[ -f $pkgdir/modules.builtin ]] || ember_die "$pkgdir/modules.builtin missing"
    while IFS= read -r line; do
        p=${line%%:*}
        n=${p##*/} && n=${n%%.ko*} && n=${n//-/_}
        path_of[$n]=$p
        deps_of[$n]=${line#*:}
    done < <(depmod -n -b "$OUT/kernel-pkg" "$KVER" 2>/dev/null | grep -E '^[^#: ]+\.ko(\.[a-z0-9]+)?:')
    ((${#path_of[@]})) || ember_die "depmod -n found no modules in $pkgdir"
    while IFS= read -r p; do
        n=${p##*/} && n=${n%%.ko*} && builtin[${n//-/_}]=1
    done <"$pkgdir/modules.builtin"
    visit() {
        local m=$1 d
        [[ -n ${seen[$m]:-} ]] && return 0
        seen[$m]=1
        for d in ${deps_of[$m]}; do
            d=${d##*/} && d=${d%%.ko*} && visit "${d//-/_}"
        done
        order+=("$m")
    }
    for m in "${GUEST_MODULES[@]}"; do
        m=${m//-/_}
        if [[ -n ${path_of[$m]:-} ]]; then
            load+=("$m")
            visit "$m"
        elif [[ -n ${builtin[$m]:-} ]]; then
            skipped+=("$m")
        else
            ember_die "kernel module $m is neither a module nor built into $KVER"
        fi
    done
    for m in "${order[@]}"; do
        p=${path_of[$m]}
        mkdir -p "$dst/${p%/*}"
        case $p in
            *.ko) cp "$pkgdir/$p" "$dst/$p" ;;
            *.ko.xz) xz -dc "$pkgdir/$p" >"$dst/${p%.xz}" ;;
            *.ko.zst) zstd -qdc "$pkgdir/$p" >"$dst/${p%.zst}" ;;
            *.ko.gz) gzip -dc "$pkgdir/$p" >"$dst/${p%.gz}" ;;
            *) ember_die "unsupported module file $p" ;;
        esac
    done
    cp "$pkgdir/modules.builtin" "$dst/"
    [[ -f $pkgdir/modules.builtin.modinfo ]] && cp "$pkgdir/modules.builtin.modinfo" "$dst/"
    # modules.order, for depmod's ordering: the copied modules only.
    if [[ -f $pkgdir/modules.order ]]; then
        (cd "$dst" && find kernel -name '*.ko' >"$dst/.have")
        grep -Fx -f "$dst/.have" "$pkgdir/modules.order" >"$dst/modules.order" || true
        rm -f "$dst/.have"
    fi
    depmod -b "$stage" "$KVER" || ember_die "depmod -b $stage $KVER failed"
    # busybox modprobe reads only these; the binary indexes are kmod's.
    find "$dst" -maxdepth 1 -type f -name 'modules.*' ! -name modules.dep \
        ! -name modules.alias ! -name modules.symbols ! -name modules.builtin -delete
    printf '%s\n' "${load[@]}" >"$stage/etc/ember-modules"
    ember_log "modules for $KVER: load ${load[*]}; with dependencies ${order[*]}${skipped:+; built in: ${skipped[*]}}"
}

INIT=$HERE/init
stamp=$(ember_fingerprint "$INIT" "$HERE/ember-wait" "$HERE/blkbench.c" "$HERE/stream.c" "$HERE/mark.c" "$HERE/lib.sh" \
    /bin/busybox "$HERE/build.sh" "$KVER" "modules: ${GUEST_MODULES[*]}" initramfs-v2)
if [[ ! -x $OUT/ember-stream || $HERE/stream.c -nt $OUT/ember-stream ]]; then
    gcc -O2 -static -s -Wall -o "$OUT/ember-stream.tmp" "$HERE/stream.c" ||
        ember_die "cannot build $HERE/stream.c"
    mv "$OUT/ember-stream.tmp" "$OUT/ember-stream"
fi
if [[ ! -f $OUT/initramfs.cpio.gz || ! -f $OUT/initramfs.stamp || $(<"$OUT/initramfs.stamp") != "$stamp" ]]; then
    did=1
    ember_log "building initramfs.cpio.gz"
    stage=$(mktemp -d "$OUT/.initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    ember_guest_userland "$stage"
    stage_modules "$stage"
    gcc -O2 -static -s -Wall -o "$stage/bin/blkbench" "$HERE/blkbench.c" ||
        ember_die "cannot build $HERE/blkbench.c"
    cp "$OUT/ember-stream" "$stage/bin/ember-stream"
    gcc -O2 -static -nostdlib -s -Wall -o "$stage/bin/ember-mark" "$HERE/mark.c" ||
        ember_die "cannot build $HERE/mark.c"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9 -n >"$OUT/initramfs.cpio.gz.tmp"
    mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
    printf '%s\n' "$stamp" >"$OUT/initramfs.stamp"
    rm -rf "$stage"
    trap - EXIT
    ember_log "initramfs.cpio.gz: $(stat -c %s "$OUT/initramfs.cpio.gz") bytes"
fi

if [[ -n $did || -t 2 ]]; then
    ember_log "ok: kernel $KVER, PVH entry $(<"$OUT/vmlinux.pvh"), outputs in $OUT"
fi

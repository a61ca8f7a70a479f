#!/usr/bin/env bash
# Build the Ember microVM guest kernel (Linux 6.1 from Debian's linux-source-6.1)
# with resources/kernel/microvm.config, into build/kernel/ (or $EMBER_KERNEL_DIR):
#   vmlinux         ELF kernel with the PVH entry note (boot with --kernel vmlinux)
#   bzImage         the same kernel as a bzImage (LZ4-compressed payload)
#   config          the full .config it was built with
#   System.map      its symbol table
#   kernel-version  `make kernelrelease`, e.g. 6.1.192-ember
# Work areas (both reused between runs): src/linux-source-6.1 (the unpacked
# source tree, never written to) and obj/ (the out-of-tree build, O=obj).
#
# Idempotent: when build/kernel/stamp matches the hash of the config fragment,
# this script and the linux-source-6.1 version, only the checks run.
# Environment: EMBER_KERNEL_DIR (output dir), EMBER_KERNEL_JOBS (default
# nproc), EMBER_KERNEL_FORCE=1 (run make even when the stamp matches).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${EMBER_KERNEL_DIR:-$ROOT/build/kernel}
FRAGMENT=$HERE/microvm.config
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/$SRC_PKG.tar.xz
JOBS=${EMBER_KERNEL_JOBS:-$(nproc)}

log() { printf 'kernel/build.sh: %s\n' "$*" >&2; }
die() { printf 'kernel/build.sh: error: %s\n' "$*" >&2; exit 1; }

# Options that must end up =y in the final .config (build fails otherwise).
REQUIRED=(
    64BIT SMP X86_X2APIC HYPERVISOR_GUEST PARAVIRT KVM_GUEST PARAVIRT_CLOCK
    PARAVIRT_SPINLOCKS PVH ACPI PRINTK PRINTK_TIME
    TTY SERIAL_8250 SERIAL_8250_CONSOLE
    VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET
    HW_RANDOM HW_RANDOM_VIRTIO VSOCKETS VIRTIO_VSOCKETS
    NET UNIX INET BLOCK EXT4_FS TMPFS DEVTMPFS PROC_FS SYSFS
    BLK_DEV_INITRD RD_GZIP BINFMT_ELF BINFMT_SCRIPT
)

[[ -f $FRAGMENT ]] || die "missing config fragment $FRAGMENT"
[[ $(uname -m) == x86_64 ]] || die "only x86_64 hosts are supported (no cross-compilation)"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock -n 9 || { log "waiting for another build in $OUT"; flock 9; }

# --- build dependencies ----------------------------------------------------------
# lz4: CONFIG_KERNEL_LZ4; libelf-dev: objtool (ORC unwinder); libssl-dev:
# scripts/sign-file and friends; bc/bison/flex/cpio/xz-utils: kbuild and kconfig.
DEPS=(build-essential bc bison flex libelf-dev libssl-dev cpio lz4 xz-utils "$SRC_PKG")
missing=()
for pkg in "${DEPS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "need root to install: ${missing[*]} (or install them yourself)"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
fi
[[ -f $TARBALL ]] || die "$TARBALL not found (is $SRC_PKG installed?)"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")

# --- source tree -------------------------------------------------------------------
SRC=$OUT/src/$SRC_PKG
if [[ ! -f $SRC/Makefile || ! -f $OUT/src/.version || $(<"$OUT/src/.version") != "$SRC_VERSION" ]]; then
    log "unpacking $TARBALL ($SRC_PKG $SRC_VERSION)"
    rm -rf "$OUT/src" "$OUT/obj"
    mkdir -p "$OUT/src"
    tmp=$(mktemp -d "$OUT/src/.unpack.XXXXXX")
    tar -xf "$TARBALL" -C "$tmp" || die "cannot unpack $TARBALL"
    [[ -f $tmp/$SRC_PKG/Makefile ]] || die "$TARBALL does not contain $SRC_PKG/Makefile"
    mv "$tmp/$SRC_PKG" "$SRC"
    rmdir "$tmp"
    printf '%s\n' "$SRC_VERSION" >"$OUT/src/.version"
fi

# --- checks ------------------------------------------------------------------------
# check_config CONFIG: every option in REQUIRED is =y (fatal), and every line of
# the fragment took effect (a warning: it means the fragment needs fixing, e.g. a
# dependency is missing or the symbol does not exist in this kernel).
check_config() {
    local config=$1 sym want got bad=0 warned=0
    declare -A have=()
    while IFS='=' read -r sym got; do
        have[$sym]=$got
    done < <(sed -nE 's/^CONFIG_([A-Za-z0-9_]+)=(.*)$/\1=\2/p' "$config")
    for sym in "${REQUIRED[@]}"; do
        if [[ ${have[$sym]:-n} != y ]]; then
            printf 'kernel/build.sh: check: CONFIG_%s=%s, required =y\n' "$sym" "${have[$sym]:-n}" >&2
            bad=1
        fi
    done
    while read -r sym want; do
        got=${have[$sym]:-n}
        if [[ $got != "$want" ]]; then
            printf 'kernel/build.sh: warning: %s asks for CONFIG_%s=%s, got %s\n' \
                "${FRAGMENT##*/}" "$sym" "$want" "$got" >&2
            warned=1
        fi
    done < <(sed -nE 's/^CONFIG_([A-Za-z0-9_]+)=(.*)$/\1 \2/p; s/^# CONFIG_([A-Za-z0-9_]+) is not set$/\1 n/p' "$FRAGMENT")
    ((bad == 0)) || die "$config lacks required options (see above)"
    ((warned == 0)) || log "some fragment lines did not take effect (warnings above)"
    log "check: all ${#REQUIRED[@]} required options are =y in ${config#"$ROOT"/}"
}

# check_outputs: vmlinux is an x86-64 ELF with a Xen PVH entry note (type 0x12),
# bzImage carries the "HdrS" boot-protocol header.
check_outputs() {
    local vmlinux=$OUT/vmlinux bzimage=$OUT/bzImage magic note
    [[ -s $vmlinux && -s $bzimage ]] || die "missing $vmlinux or $bzimage"
    magic=$(od -An -tx1 -N5 "$vmlinux" | tr -d ' \n')
    [[ $magic == 7f454c4602 ]] || die "$vmlinux is not a 64-bit ELF file"
    # binutils prints the type either as a number or by name, depending on version.
    note=$(readelf -nW "$vmlinux" | grep -E '^\s*Xen\s.*(0x00000012|PHYS32_ENTRY)' || true)
    [[ -n $note ]] || die "$vmlinux has no PVH note (Xen note type 0x12, XEN_ELFNOTE_PHYS32_ENTRY)"
    # The description is the little-endian entry address; readelf puts its
    # bytes on the note's line (-W) or on the next one.
    local bytes entry=
    bytes=$(readelf -nW "$vmlinux" | awk '
        /^[ \t]*Xen[ \t]/ && /(0x00000012|PHYS32_ENTRY)/ { want = 1 }
        want && /description data:/ { sub(/.*description data:/, ""); print; exit }')
    for b in $bytes; do entry=$b$entry; done
    log "check: vmlinux has the PVH note (Xen type 0x12, entry 0x${entry:-?})"
    magic=$(od -An -c -j 0x202 -N4 "$bzimage" | tr -d ' \n')
    [[ $magic == HdrS ]] || die "$bzimage lacks the x86 boot header (HdrS at 0x202)"
    log "check: bzImage has the x86 boot protocol header"
}

# --- up to date? ------------------------------------------------------------------
stamp=$(cat "$FRAGMENT" "${BASH_SOURCE[0]}" <(printf '%s\n' "$SRC_PKG=$SRC_VERSION") |
    sha256sum | cut -d' ' -f1)
if [[ ${EMBER_KERNEL_FORCE:-0} != 1 && -f $OUT/stamp && $(<"$OUT/stamp") == "$stamp" &&
    -s $OUT/vmlinux && -s $OUT/bzImage && -s $OUT/config ]]; then
    log "up to date ($(<"$OUT/kernel-version"))"
    check_config "$OUT/config"
    check_outputs
    exit 0
fi
rm -f "$OUT/stamp"

# --- configure ------------------------------------------------------------------------
# allnoconfig + fragment: everything not asked for is off (see microvm.config).
OBJ=$OUT/obj
mkdir -p "$OBJ"
MAKE=(make -C "$SRC" O="$OBJ" ARCH=x86_64 KBUILD_BUILD_USER=ember KBUILD_BUILD_HOST=ember)
BUILD_LOG=$OUT/build.log
: >"$BUILD_LOG"
run_logged() {
    if ! "$@" >>"$BUILD_LOG" 2>&1; then
        tail -n 40 "$BUILD_LOG" >&2
        die "'${*: -1}' failed; full log: $BUILD_LOG"
    fi
}
log "configuring: allnoconfig + ${FRAGMENT#"$ROOT"/}, then olddefconfig"
run_logged "${MAKE[@]}" KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig
run_logged "${MAKE[@]}" olddefconfig
check_config "$OBJ/.config"

# --- build ------------------------------------------------------------------------------
log "building vmlinux and bzImage with -j$JOBS (log: ${BUILD_LOG#"$ROOT"/})"
start=$SECONDS
run_logged "${MAKE[@]}" -j"$JOBS" bzImage
log "make took $((SECONDS - start))s"

# --- install ---------------------------------------------------------------------------
release=$("${MAKE[@]}" -s --no-print-directory kernelrelease)
install_file() { cp "$1" "$OUT/.$2.tmp" && mv "$OUT/.$2.tmp" "$OUT/$2"; }
install_file "$OBJ/vmlinux" vmlinux
install_file "$OBJ/arch/x86/boot/bzImage" bzImage
install_file "$OBJ/.config" config
install_file "$OBJ/System.map" System.map
printf '%s\n' "$release" >"$OUT/kernel-version"

check_config "$OUT/config"
check_outputs
printf '%s\n' "$stamp" >"$OUT/stamp"
log "done: $release; vmlinux $(stat -c %s "$OUT/vmlinux") bytes, bzImage $(stat -c %s "$OUT/bzImage") bytes"

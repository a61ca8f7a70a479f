# shellcheck shell=bash
# Shared helpers for resources/guest/build.sh and resources/box/box.sh.
# Source it from bash scripts that run with `set -euo pipefail`.

EMBER_ROOT=${EMBER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

ember_log() { printf '%s: %s\n' "${EMBER_LOG_TAG:-ember}" "$*" >&2; }
ember_die() { printf '%s: error: %s\n' "${EMBER_LOG_TAG:-ember}" "$*" >&2; exit 1; }

# True when the Debian package lists look populated (apt-get update has run).
ember_apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null ||
        compgen -G '/var/lib/apt/lists/*_Packages.*' >/dev/null
}

ember_apt_update() {
    ember_log "running apt-get update"
    local log
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        ember_die "apt-get update failed"
    fi
    rm -f "$log"
}

# ember_need CMD=PKG ...: install the Debian package PKG for every CMD that is
# not on PATH (CMD may also be an absolute file path).
ember_need() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd=${spec%%=*} pkg=${spec#*=}
        if [[ $cmd == /* ]]; then
            [[ -e $cmd ]] && continue
        else
            command -v "$cmd" >/dev/null 2>&1 && continue
        fi
        missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || ember_die "need root to install: ${missing[*]} (or install them yourself)"
    ember_apt_lists_present || ember_apt_update
    ember_log "installing: ${missing[*]}"
    local log
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        ember_apt_update
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            ember_die "apt-get install ${missing[*]} failed"
        fi
    fi
    rm -f "$log"
}

# ember_kernel_pkg_version META: print the kernel version string (e.g.
# 6.1.0-56-cloud-amd64) of the linux-image package that META depends on.
ember_kernel_pkg_version() {
    local meta=$1 dep
    ember_apt_lists_present || ember_apt_update
    dep=$(apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }') || true
    if [[ -z $dep ]]; then
        ember_apt_update
        dep=$(apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }') || true
    fi
    [[ -n $dep ]] || ember_die "cannot find the linux-image package that $meta depends on (apt-cache depends $meta)"
    printf '%s\n' "${dep#linux-image-}"
}

# ember_fetch_kernel META DEST: make sure DEST holds the extracted kernel
# package that META depends on (DEST/boot/vmlinuz-VER, DEST/lib/modules/VER).
# Skips all work (and every apt query) when DEST is already complete, unless
# EMBER_REFRESH_KERNEL=1. Prints the kernel version on stdout.
ember_fetch_kernel() {
    local meta=$1 dest=$2 ver tmp deb
    if [[ ${EMBER_REFRESH_KERNEL:-0} != 1 && -s $dest/.version ]]; then
        ver=$(<"$dest/.version")
        if [[ -f $dest/boot/vmlinuz-$ver && -d $dest/lib/modules/$ver ]]; then
            printf '%s\n' "$ver"
            return 0
        fi
    fi
    ember_need dpkg-deb=dpkg apt-get=apt
    ver=$(ember_kernel_pkg_version "$meta")
    if [[ -s $dest/.version && $(<"$dest/.version") == "$ver" && -f $dest/boot/vmlinuz-$ver ]]; then
        printf '%s\n' "$ver"
        return 0
    fi
    ember_log "downloading linux-image-$ver (via $meta)"
    tmp=$(mktemp -d "${dest%/*}/.kernel-dl.XXXXXX")
    # apt-get download as root warns when _apt cannot write the directory.
    chmod 777 "$tmp"
    if ! (cd "$tmp" && apt-get download -q "linux-image-$ver" >/dev/null 2>"$tmp/err"); then
        ember_apt_update
        ver=$(ember_kernel_pkg_version "$meta")
        (cd "$tmp" && apt-get download -q "linux-image-$ver" >/dev/null 2>"$tmp/err") || {
            cat "$tmp/err" >&2
            rm -rf "$tmp"
            ember_die "apt-get download linux-image-$ver failed"
        }
    fi
    deb=$(compgen -G "$tmp/linux-image-${ver}_*.deb" | head -n1)
    [[ -n $deb ]] || ember_die "downloaded kernel package not found in $tmp"
    mkdir -p "$tmp/x"
    dpkg-deb -x "$deb" "$tmp/x" || ember_die "dpkg-deb -x $deb failed"
    # Older packages ship /lib/modules, merged-/usr ones /usr/lib/modules.
    if [[ ! -d $tmp/x/lib/modules/$ver && -d $tmp/x/usr/lib/modules/$ver ]]; then
        mkdir -p "$tmp/x/lib/modules"
        mv "$tmp/x/usr/lib/modules/$ver" "$tmp/x/lib/modules/$ver"
    fi
    [[ -f $tmp/x/boot/vmlinuz-$ver && -d $tmp/x/lib/modules/$ver ]] ||
        ember_die "unexpected layout in $deb (no boot/vmlinuz-$ver or lib/modules/$ver)"
    printf '%s\n' "$ver" >"$tmp/x/.version"
    rm -rf "$dest"
    mv "$tmp/x" "$dest"
    rm -rf "$tmp"
    printf '%s\n' "$ver"
}

# ember_fingerprint ARG...: stable hash over the ARGs; an ARG naming a regular
# file contributes its contents, any other ARG the string itself.
ember_fingerprint() {
    local f
    {
        for f in "$@"; do
            if [[ -f $f ]]; then sha256sum <"$f"; else printf '%s\n' "$f"; fi
        done
    } | sha256sum | cut -d' ' -f1
}

# True if FILE is an ELF whose LOAD/NOTE segments all lie inside the file
# (i.e. it was not truncated).
ember_elf_complete() {
    local f=$1 size need=0 type off _va _pa filesz _rest
    readelf -h "$f" >/dev/null 2>&1 || return 1
    size=$(stat -c %s "$f")
    while read -r type off _va _pa filesz _rest; do
        [[ $type == LOAD || $type == NOTE ]] || continue
        ((off + filesz > need)) && need=$((off + filesz))
    done < <(readelf -lW "$f" 2>/dev/null)
    ((need > 0 && need <= size))
}

# ember_extract_vmlinux BZIMAGE OUT: unpack the ELF kernel from a bzImage.
# Looks for the magic of each compressor the kernel may use (LZ4 legacy frame
# 02 21 4c 18, XZ fd 37 7a 58 5a 00, gzip 1f 8b 08, zstd 28 b5 2f fd) and
# keeps the first candidate that decompresses to a complete 64-bit ELF.
ember_extract_vmlinux() {
    local src=$1 out=$2 magic tool off
    local -a cands=(
        '\x02\x21\x4c\x18:lz4 -dc'
        '\xfd\x37\x7a\x58\x5a\x00:xz -dc --single-stream'
        '\x1f\x8b\x08:gzip -dc'
        '\x28\xb5\x2f\xfd:zstd -qdc'
    )
    for magic in "${cands[@]}"; do
        tool=${magic#*:} magic=${magic%%:*}
        command -v "${tool%% *}" >/dev/null 2>&1 || continue
        while IFS=: read -r off _; do
            # The decompressor fails on the bytes that trail the compressed
            # stream (appended size, rest of the image); the result is
            # checked instead of its exit status.
            tail -c +"$((off + 1))" "$src" | $tool >"$out.tmp" 2>/dev/null || true
            if [[ $(head -c 5 "$out.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c4602 ]] &&
                ember_elf_complete "$out.tmp"; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done < <(LC_ALL=C grep -obUaP "$magic" "$src" || true)
    done
    rm -f "$out.tmp"
    ember_die "no compressed payload in $src decompressed to an ELF kernel"
}

# ember_pvh_entry VMLINUX: print the PVH entry point (Xen ELF note type 18,
# XEN_ELFNOTE_PHYS32_ENTRY; little-endian descriptor) or nothing.
ember_pvh_entry() {
    local note bytes i hex=
    note=$(readelf -n "$1" | grep -A1 -E '^ *Xen +0x[0-9a-f]+[[:space:]].*\(0x00000012\)' |
        sed -n 's/.*description data: *//p' | head -n1)
    [[ -n $note ]] || return 0
    read -r -a bytes <<<"$note"
    for ((i = ${#bytes[@]} - 1; i >= 0; i--)); do hex+=${bytes[i]}; done
    printf '0x%x\n' "$((16#$hex))"
}

# ember_guest_userland STAGE: populate the directory STAGE with the test
# guest's user space, shared by the initramfs (build.sh) and the ext4 root
# images (rootfs.sh): static /bin/busybox with every applet linked to it,
# resources/guest/init as /init, resources/guest/ember-wait as /bin/ember-wait,
# and the empty mount points. Needs a static /bin/busybox (busybox-static).
EMBER_GUEST_SRC=$EMBER_ROOT/resources/guest
ember_guest_userland() {
    local stage=$1 applet
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
    chmod 1777 "$stage/tmp"
    cp /bin/busybox "$stage/bin/busybox"
    while read -r applet; do
        [[ -e $stage/$applet || -L $stage/$applet ]] && continue
        ln -s /bin/busybox "$stage/$applet"
    done < <(/bin/busybox --list-full)
    install -m 0755 "$EMBER_GUEST_SRC/init" "$stage/init"
    install -m 0755 "$EMBER_GUEST_SRC/ember-wait" "$stage/bin/ember-wait"
    # Without root the console node is skipped; /init reopens it from devtmpfs.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
}

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
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
        ember_die "apt-get update failed"
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
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        ember_apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
            ember_die "apt-get install ${missing[*]} failed"
    fi
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

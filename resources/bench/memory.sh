#!/usr/bin/env bash
# memory.sh: the VMM's own resident memory (everything but guest RAM), Ember
# side by side with QEMU's microvm machine (Debian's qemu-system-x86), and the
# binary sizes. See docs/performance.md, "VMM memory overhead".
#
#   resources/bench/memory.sh [RUNS] [LINUX_RUNS]
#
# RUNS (default 10): halted tiny guest (resources/test-guests' halt-pvh.elf,
#   1 vCPU, 128 MiB), run directly on this host's /dev/kvm.
# LINUX_RUNS (default 3; 0 skips it): idle Linux guest (Debian cloud kernel +
#   the test initramfs, 1 vCPU, 256 MiB, measured 5 s after its init says it
#   is idle). Needs a /dev/kvm that runs Linux: when `resources/box/box.sh
#   need` says this one cannot, a private nested-KVM box is started for it
#   (state in $EMBER_BENCH_BOX_DIR, default /tmp/ember-bench-box-<pid>;
#   stopped on exit). Several minutes under nested emulation.
#
# Ember and QEMU alternate, the order swapping from run to run; the tables
# show medians. resources/bench/memory-inner.sh does the measuring and
# documents the method: the VMM's /proc/PID/smaps, guest RAM being every
# anonymous mapping at least as large as the guest's memory; Rss, Pss and
# Private (clean + dirty) summed over all other mappings.
#
# Builds Ember (cargo build --release), the tiny guests and, for the Linux
# part, the test guest (resources/guest/build.sh); installs qemu-system-x86 if
# missing. Environment: EMBER_BENCH_RAW=FILE keeps the raw MEM lines;
# EMBER_BENCH_EMBER=PATH measures that ember binary instead of
# target/release/ember (before/after comparisons).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh
EMBER_LOG_TAG=bench/memory.sh
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { bench_usage 6,6; }
(($# <= 2)) || usage
RUNS=${1:-10}
LINUX_RUNS=${2:-3}
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || { ember_log "RUNS must be a positive integer, got '$RUNS'"; usage; }
[[ $LINUX_RUNS =~ ^[0-9]{1,3}$ ]] || { ember_log "LINUX_RUNS must be a number, got '$LINUX_RUNS'"; usage; }

command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"
ember_need gcc=gcc ld=binutils strip=binutils qemu-system-x86_64=qemu-system-x86 awk=gawk
OUT=build/bench/memory
mkdir -p "$OUT"
ember_log "building ember (release) and the tiny guests"
cargo build --release --quiet
resources/test-guests/build.sh "$OUT/guests"
if ((LINUX_RUNS > 0)); then
    ember_log "building the Linux test guest (resources/guest/build.sh)"
    resources/guest/build.sh
fi

RAW=$(mktemp "${TMPDIR:-/tmp}/ember-bench-memory.XXXXXX")
BOX_STATE=
cleanup() {
    if [[ -n $BOX_STATE ]]; then
        EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
        if [[ -z ${EMBER_BENCH_BOX_DIR:-} ]]; then rm -rf "$BOX_STATE"; fi
    fi
    rm -f "$RAW"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ember_log "tiny guest: $RUNS runs of each VMM"
resources/bench/memory-inner.sh tiny "$RUNS" "$ROOT/$OUT/guests/halt-pvh.elf" >>"$RAW"
if ((LINUX_RUNS > 0)); then
    inner=(resources/bench/memory-inner.sh linux "$LINUX_RUNS")
    if resources/box/box.sh need; then
        BOX_STATE=${EMBER_BENCH_BOX_DIR:-/tmp/ember-bench-box-$$}
        ember_log "idle Linux guest: $LINUX_RUNS runs of each VMM, inside a nested-KVM box ($BOX_STATE)"
        EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh start --owner $$
        EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh exec --timeout $((LINUX_RUNS * 2 * 700 + 300)) -- "${inner[@]}" >>"$RAW"
        EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
        BOX_STATE=
    else
        ember_log "idle Linux guest: $LINUX_RUNS runs of each VMM"
        "${inner[@]}" >>"$RAW"
    fi
fi
[[ -n ${EMBER_BENCH_RAW:-} ]] && cp "$RAW" "$EMBER_BENCH_RAW"

# --- report --------------------------------------------------------------------------
EMBER=${EMBER_BENCH_EMBER:-target/release/ember}
strip -o "$OUT/ember.stripped" "$EMBER"
QEMU_BIN=$(command -v qemu-system-x86_64)
qemu_libs=$(ldd "$QEMU_BIN" 2>/dev/null | awk '$3 ~ /^\// { print $3 }' | xargs -r stat -L -c %s | awk '{ s += $1; n++ } END { printf "%d %d", n, s }')
ember_libs=$(ldd "$EMBER" 2>/dev/null | awk '$3 ~ /^\// { print $3 }' | xargs -r stat -L -c %s | awk '{ s += $1; n++ } END { printf "%d %d", n, s }')

awk -v kinds="tiny linux" '
function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
}
function field(name,    i) {
    for (i = 1; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
    return ""
}
$1 == "MEM" {
    k = field("kind"); v = field("vmm"); runs[k, v]++
    split("rss pss private anon guest_rss total_rss threads", fs, " ")
    for (i in fs) vals[k, v, fs[i]] = vals[k, v, fs[i]] " " field(fs[i])
}
END {
    split("rss pss private anon guest_rss total_rss threads", fs, " ")
    split("non-guest Rss|non-guest Pss|non-guest Private (clean+dirty)|non-guest Anonymous|guest RAM resident|total Rss|threads", names, "|")
    nk = split(kinds, ks, " ")
    for (x = 1; x <= nk; x++) {
        k = ks[x]
        if (!runs[k, "ember"] && !runs[k, "qemu"]) continue
        printf "\n%s guest: medians over %d Ember and %d QEMU runs, KiB (QEMU/Ember: > 1 means Ember uses less)\n\n",
            k == "tiny" ? "halted tiny (halt-pvh, 1 vCPU, 128 MiB)" : "idle Linux (Debian cloud kernel + initramfs, 1 vCPU, 256 MiB)",
            runs[k, "ember"], runs[k, "qemu"]
        printf "| %-32s | %9s | %9s | %10s |\n", "figure", "Ember", "QEMU", "QEMU/Ember"
        printf "|----------------------------------|----------:|----------:|-----------:|\n"
        for (i = 1; i <= 7; i++) {
            e = median(vals[k, "ember", fs[i]]); q = median(vals[k, "qemu", fs[i]])
            r = (e != "" && q != "" && e > 0) ? sprintf("%.1f", q / e) : "-"
            printf "| %-32s | %9s | %9s | %10s |\n", names[i], e == "" ? "-" : e, q == "" ? "-" : q, r
        }
    }
}' "$RAW"

echo
echo "binaries (bytes)"
echo
printf '| %-46s | %10s |\n' file size
printf '|------------------------------------------------|-----------:|\n'
printf '| %-46s | %10s |\n' "ember (target/release/ember)" "$(stat -c %s "$EMBER")"
printf '| %-46s | %10s |\n' "ember, stripped" "$(stat -c %s "$OUT/ember.stripped")"
printf '| %-46s | %10s |\n' "ember's shared libraries (${ember_libs% *} files)" "${ember_libs#* }"
printf '| %-46s | %10s |\n' "$QEMU_BIN (Debian, stripped)" "$(stat -L -c %s "$QEMU_BIN")"
printf '| %-46s | %10s |\n' "QEMU's shared libraries (${qemu_libs% *} files)" "${qemu_libs#* }"

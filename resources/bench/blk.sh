#!/usr/bin/env bash
# blk.sh: virtio-blk throughput measured inside the guest, Ember side by side
# with QEMU's microvm machine (Debian's qemu-system-x86) booting the same
# kernel, initramfs and disk image. See docs/performance.md.
#
#   resources/bench/blk.sh [RUNS] [SIZE_MIB]
#
# RUNS (default 5): boots of each VMM; Ember and QEMU alternate, the order
#   swapping from run to run, and the table shows medians.
# SIZE_MIB (default 64): MiB each sequential mode moves in 1 MiB requests.
#   The random modes move SIZE_MIB/4 MiB (at least 1) in 4 KiB requests over
#   that many MiB at the start of the disk: each 4 KiB request costs ms under
#   nested emulation. EMBER_BENCH_RAND_MIB sets that size explicitly.
#
# Builds Ember (cargo build --release) and the test guest
# (resources/guest/build.sh), installs qemu-system-x86 if missing, and runs
# resources/bench/blk-inner.sh once, inside a private nested-KVM box when
# `resources/box/box.sh need` says this /dev/kvm cannot run Linux (state in
# $EMBER_BENCH_BOX_DIR, default /tmp/ember-bench-box-<pid>; stopped on exit),
# else directly. Each guest: Debian cloud kernel + test initramfs, 1 vCPU,
# 256 MiB, running /bin/blkbench (O_DIRECT) on /dev/vda for seqread, seqwrite,
# randread and randwrite. The image is a raw file in the tmpfs /dev/shm.
#
# Prints per mode the median MiB/s and IOPS of each VMM and the ratio
# Ember/QEMU, then the raw numbers. A guest that fails to print its 4 results
# is booted once more (EMBER_BENCH_RETRIES, default 1; nested SVM under TCG
# occasionally resets a guest) and every failed boot is listed. Exit status 0
# when every run of both VMMs produced its 4 results, 1 otherwise; non-zero
# too on build or box failures. With the defaults, in the box: ~5 minutes on
# a quiet 2-core host, ~10 on a busy one.
#
# Environment: EMBER_BENCH_RAND_MIB, EMBER_BENCH_RETRIES, EMBER_BENCH_BOX_DIR,
# EMBER_BENCH_GUEST_TIMEOUT (seconds per guest boot, default 900),
# EMBER_BENCH_RAW=FILE (also save the raw result lines to FILE).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh
EMBER_LOG_TAG=bench/blk.sh
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { bench_usage 6,7; }
(($# <= 2)) || usage
RUNS=${1:-5}
SEQ_MIB=${2:-64}
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || { ember_log "RUNS must be a positive integer, got '$RUNS'"; usage; }
[[ $SEQ_MIB =~ ^[1-9][0-9]{0,4}$ ]] || { ember_log "SIZE_MIB must be a positive integer, got '$SEQ_MIB'"; usage; }
RAND_MIB=${EMBER_BENCH_RAND_MIB:-$((SEQ_MIB / 4))}
((RAND_MIB >= 1)) || RAND_MIB=1
[[ $RAND_MIB =~ ^[1-9][0-9]{0,4}$ ]] || ember_die "EMBER_BENCH_RAND_MIB must be a positive integer, got '$RAND_MIB'"
[[ ${EMBER_BENCH_RETRIES:-1} =~ ^[0-9]$ ]] || ember_die "EMBER_BENCH_RETRIES must be 0 to 9"
# Guests have 256 MiB; the image is in the box's (or this host's) tmpfs.
((SEQ_MIB <= 4096 && RAND_MIB <= 4096)) || ember_die "sizes above 4096 MiB are not supported"

T_START=$(date +%s)

# --- build -------------------------------------------------------------------------
initramfs_has_blkbench() {
    resources/guest/build.sh &&
        gzip -dc build/guest/initramfs.cpio.gz | cpio -it --quiet 2>/dev/null |
        grep -x 'bin/blkbench' >/dev/null # (not -q: an early exit would fail the pipe)
}

command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"
ember_need qemu-system-x86_64=qemu-system-x86 timeout=coreutils cpio=cpio gzip=gzip
bench_retry "cargo build --release" cargo build --release --quiet
bench_retry "the test initramfs with /bin/blkbench" initramfs_has_blkbench

# --- measure ------------------------------------------------------------------------
RAW=$(mktemp "${TMPDIR:-/tmp}/ember-blkbench-raw.XXXXXX")
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

GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-900}
inner=(resources/bench/blk-inner.sh "$RUNS" "$SEQ_MIB" "$RAND_MIB")
ember_log "$RUNS runs; sequential $SEQ_MIB MiB in 1 MiB requests, random $RAND_MIB MiB in 4 KiB requests"
inner_rc=0
if resources/box/box.sh need; then
    BOX_STATE=${EMBER_BENCH_BOX_DIR:-/tmp/ember-bench-box-$$}
    ember_log "/dev/kvm here cannot run Linux guests: measuring inside a nested-KVM box ($BOX_STATE)"
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh start --owner $$
    EMBER_BOX_DIR=$BOX_STATE EMBER_BENCH_GUEST_TIMEOUT=$GUEST_TIMEOUT resources/box/box.sh exec \
        --timeout $((RUNS * 2 * (1 + ${EMBER_BENCH_RETRIES:-1}) * (GUEST_TIMEOUT + 30) + 600)) -- "${inner[@]}" >"$RAW" || inner_rc=$?
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
else
    EMBER_BENCH_GUEST_TIMEOUT=$GUEST_TIMEOUT "${inner[@]}" >"$RAW" || inner_rc=$?
fi
[[ -n ${EMBER_BENCH_RAW:-} ]] && cp "$RAW" "$EMBER_BENCH_RAW"
T_TOTAL=$(($(date +%s) - T_START))

# --- report -------------------------------------------------------------------------
# awk prints the tables and exits 1 when a (vmm, run) lacks one of the 4 modes.
report_rc=0
awk -v runs="$RUNS" -v seq_mib="$SEQ_MIB" -v rand_mib="$RAND_MIB" -v total="$T_TOTAL" '
function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {          # insertion sort, numeric
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt_mib(x) {
    return x == "" ? "-" : sprintf(x < 10 ? "%.2f" : "%.1f", x)
}
function field(name,    i) {
    for (i = 1; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
    return ""
}
$1 == "RESULT" {
    v = field("vmm"); r = field("run"); m = field("mode")
    # Recomputed from bytes and secs: blkbench rounds mibps to 0.1, too
    # coarse for the random modes (~1 MiB/s here).
    secs = field("secs") + 0; bytes = field("bytes") + 0
    if (secs <= 0) secs = 0.001
    rate = bytes / 1048576 / secs
    mib[v, m] = mib[v, m] " " rate
    iops[v, m] = iops[v, m] " " (bytes / (m ~ /^seq/ ? 1048576 : 4096)) / secs
    have[v, r, m] = 1
    val[v, r, m] = rate
    raw[++nraw] = sprintf("%-4s %-6s %-10s %9s %9s %8s", r, v, m, field("mibps"), field("iops"), field("secs"))
}
$1 == "GUEST" && field("results") == 4 {
    v = field("vmm"); wall[v] = wall[v] " " field("wall")
}
$1 == "FAILED" {
    failed[++nfailed] = sprintf("%s run %s attempt %s: exit status %s after %ss, %s of 4 results",
        field("vmm"), field("run"), field("attempt"), field("status"), field("wall"), field("results"))
}
END {
    split("seqread seqwrite randread randwrite", modes, " ")
    split("ember qemu", vmms, " ")
    missing = 0
    for (r = 1; r <= runs; r++)
        for (k = 1; k <= 2; k++)
            for (i = 1; i <= 4; i++)
                if (!have[vmms[k], r, modes[i]]) { missing++; miss = miss sprintf(" %s/run%d/%s", vmms[k], r, modes[i]) }
    printf "\nvirtio-blk inside the guest (blkbench, O_DIRECT, 1 vCPU, 256 MiB), medians of %d run(s)\n", runs
    printf "sequential: %d MiB in 1 MiB requests; random: %d MiB in 4 KiB requests\n", seq_mib, rand_mib
    printf "Ember/QEMU: ratio of the medians; per-run: median (min-max) of each run'"'"'s ratio\n\n"
    printf "| mode      | Ember MiB/s | QEMU MiB/s | Ember IOPS | QEMU IOPS | Ember/QEMU | per-run Ember/QEMU |\n"
    printf "|-----------|------------:|-----------:|-----------:|----------:|-----------:|-------------------:|\n"
    for (i = 1; i <= 4; i++) {
        m = modes[i]
        em = median(mib["ember", m]); qm = median(mib["qemu", m])
        ei = median(iops["ember", m]); qi = median(iops["qemu", m])
        ratio = (em != "" && qm != "" && qm > 0) ? sprintf("%.2f", em / qm) : "-"
        # Ember and QEMU of one run ran back to back: their ratio cancels
        # slow drifts of the machine; its median (and range) over the runs.
        pairs = ""; lo = ""; hi = ""
        for (r = 1; r <= runs; r++)
            if (have["ember", r, m] && have["qemu", r, m] && val["qemu", r, m] > 0) {
                pr = val["ember", r, m] / val["qemu", r, m]
                pairs = pairs " " pr
                if (lo == "" || pr < lo) lo = pr
                if (hi == "" || pr > hi) hi = pr
            }
        pm = median(pairs)
        paired = pm == "" ? "-" : sprintf("%.2f (%.2f-%.2f)", pm, lo, hi)
        printf "| %-9s | %11s | %10s | %10s | %9s | %10s | %18s |\n", m, fmt_mib(em), fmt_mib(qm),
            ei == "" ? "-" : sprintf("%.0f", ei), qi == "" ? "-" : sprintf("%.0f", qi), ratio, paired
    }
    ew = median(wall["ember"]); qw = median(wall["qemu"])
    printf "\nmedian wall time per guest (boot, 4 modes, exit): Ember %ss, QEMU %ss\n",
        ew == "" ? "-" : sprintf("%.1f", ew), qw == "" ? "-" : sprintf("%.1f", qw)
    printf "total benchmark time: %dm%02ds\n", total / 60, total % 60
    printf "\nraw results:\n%-4s %-6s %-10s %9s %9s %8s\n", "run", "vmm", "mode", "MiB/s", "IOPS", "secs"
    for (i = 1; i <= nraw; i++) print raw[i]
    if (nfailed) {
        printf "\nfailed guest boots (%d; a failed boot is retried up to EMBER_BENCH_RETRIES times):\n", nfailed
        for (i = 1; i <= nfailed; i++) print "  " failed[i]
    }
    if (missing) {
        printf "\nmissing results (%d):%s\n", missing, miss
        exit 1
    }
}' "$RAW" || report_rc=$?

if ((inner_rc != 0 || report_rc != 0)); then
    ember_log "FAILED: some runs did not produce their 4 results (measuring status $inner_rc)"
    exit 1
fi

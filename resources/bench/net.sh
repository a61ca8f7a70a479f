#!/usr/bin/env bash
# net.sh: guest <-> host TCP throughput over virtio-net on a tap device, Ember
# (offloads on, and with offload=off) side by side with QEMU's microvm machine
# (Debian's qemu-system-x86, vhost=off) booting the same kernel and initramfs.
#
#   resources/bench/net.sh [RUNS] [SIZE_MIB]
#
# RUNS (default 5): boots of each VMM; the VMMs take turns, the order rotating
#   from run to run, and the table shows medians.
# SIZE_MIB (default 256; shorter transfers are dominated by TCP ramp-up):
#   MiB moved over one TCP connection in each
#   direction (guest -> host, then host -> guest). Without offloads the
#   guest sends ~2-3 MiB/s under nested emulation, so this sets the time.
#
# Builds Ember (cargo build --release; it must know --net; the guests run a
# private copy taken right after, so a rebuild meanwhile changes nothing) and
# the test guest (resources/guest/build.sh: /bin/ember-stream in the
# initramfs, build/guest/ember-stream for the host side), installs
# qemu-system-x86 and iproute2 if missing, and runs
# resources/bench/net-inner.sh once, inside a private nested-KVM box when
# `resources/box/box.sh need` says this /dev/kvm cannot run Linux (state in
# $EMBER_BENCH_BOX_DIR, default /tmp/ember-bench-box-<pid>; stopped on exit),
# else directly (as root: it creates a tap device). net-inner.sh creates the
# tap embernet<pid> with 172.31.0.1/24 on the host side (deleted on exit) and
# boots each guest (Debian cloud kernel + test initramfs, 1 vCPU, 256 MiB, one
# NIC on the tap, 172.31.0.2/24), which pings the host 20 times, then runs
# ember-stream against ember-stream listeners on the host: guest -> host (the
# guest sends SIZE_MIB MiB), then host -> guest. The figures are the guest's.
#
# Prints per direction the median MiB/s (and Gbit/s) of each VMM, the ratio
# Ember/QEMU, Ember's with/without offload, and the median ping round trip;
# then the raw numbers. A guest that fails to produce both results is booted
# once more (EMBER_BENCH_RETRIES, default 1) and every failed boot is listed.
# Exit status 0 when every run of every VMM produced both results, 1
# otherwise; non-zero too on build or box failures. With the defaults, in the
# box: ~2.5-4 minutes per run (per guest: Ember ~0.5-0.75, Ember without
# offload ~1.5-2, QEMU ~0.75-1.5), so ~15-20 minutes for 5 runs on a 2-core
# host that also runs other work. The figures swing a lot (2-5x between runs
# of one VMM) when the host is busy: compare per-run ratios, and prefer a
# quiet host.
#
# Environment: EMBER_BENCH_VMMS (which VMMs, spaces or commas; default
# "ember ember-nooff qemu"; also "qemu-nooff", QEMU with the same offloads off
# as Ember's offload=off, and "qemu-vhost", QEMU with vhost=on, the in-kernel
# data path; e.g. EMBER_BENCH_VMMS=qemu measures QEMU alone),
# EMBER_BENCH_CPUS (vCPUs per guest, default 1; 2 was slower in the box,
# whose 2 vCPUs then also run the VMM's threads), EMBER_BENCH_RETRIES,
# EMBER_BENCH_BOX_DIR,
# EMBER_BENCH_GUEST_TIMEOUT (seconds per guest boot, default 600),
# EMBER_BENCH_SUBNET (default 172.31.0, for host .1 and guest .2),
# EMBER_BENCH_PORT (default 5201, and the next port),
# EMBER_BENCH_RAW=FILE (also save the raw result lines to FILE).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh
EMBER_LOG_TAG=bench/net.sh
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { bench_usage 6,7; }
(($# <= 2)) || usage
RUNS=${1:-5}
SIZE_MIB=${2:-256}
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || { ember_log "RUNS must be a positive integer, got '$RUNS'"; usage; }
[[ $SIZE_MIB =~ ^[1-9][0-9]{0,5}$ ]] || { ember_log "SIZE_MIB must be a positive integer, got '$SIZE_MIB'"; usage; }
[[ ${EMBER_BENCH_RETRIES:-1} =~ ^[0-9]$ ]] || ember_die "EMBER_BENCH_RETRIES must be 0 to 9"
[[ ${EMBER_BENCH_CPUS:-1} =~ ^[1-9]$ ]] || ember_die "EMBER_BENCH_CPUS must be 1 to 9"
[[ ${EMBER_BENCH_GUEST_TIMEOUT:-600} =~ ^[1-9][0-9]*$ ]] || ember_die "EMBER_BENCH_GUEST_TIMEOUT must be a positive integer"
IFS=', ' read -r -a VMMS <<<"${EMBER_BENCH_VMMS:-ember ember-nooff qemu}"
((${#VMMS[@]})) || ember_die "EMBER_BENCH_VMMS is empty"
want_ember='' want_qemu=''
for v in "${VMMS[@]}"; do
    case $v in
        ember | ember-nooff) want_ember=1 ;;
        qemu | qemu-nooff | qemu-vhost) want_qemu=1 ;;
        *) ember_die "unknown VMM '$v' in EMBER_BENCH_VMMS (ember, ember-nooff, qemu, qemu-nooff, qemu-vhost)" ;;
    esac
done
export EMBER_BENCH_VMMS="${VMMS[*]}"

T_START=$(date +%s)

# --- build -------------------------------------------------------------------------
ember_with_net() {
    cargo build --release --quiet &&
        target/release/ember run --help | grep -e '--net' >/dev/null # (not -q: ember would die of SIGPIPE)
}
guest_with_stream() {
    resources/guest/build.sh && [[ -x build/guest/ember-stream ]] &&
        gzip -dc build/guest/initramfs.cpio.gz | cpio -it --quiet 2>/dev/null |
        grep -x 'bin/ember-stream' >/dev/null # (not -q: an early exit would fail the pipe)
}

ember_need timeout=coreutils cpio=cpio gzip=gzip ip=iproute2
[[ -z $want_qemu ]] || ember_need qemu-system-x86_64=qemu-system-x86
if [[ -n $want_ember ]]; then
    command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"
    bench_retry "cargo build --release (an ember that knows --net)" ember_with_net
fi
bench_retry "the test guest with ember-stream" guest_with_stream

# --- measure ------------------------------------------------------------------------
RAW=$(mktemp "${TMPDIR:-/tmp}/ember-netbench-raw.XXXXXX")
# A private copy of the binary: others may rebuild target/release/ember while
# this runs, and every run should measure the same Ember. (On the host's
# file system, which the box shares.)
PINNED=$(mktemp -d "${TMPDIR:-/tmp}/ember-netbench-bin.XXXXXX")
if [[ -n $want_ember ]]; then
    cp target/release/ember "$PINNED/ember"
    export EMBER_BENCH_EMBER=$PINNED/ember
fi
BOX_STATE=
cleanup() {
    if [[ -n $BOX_STATE ]]; then
        EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
        if [[ -z ${EMBER_BENCH_BOX_DIR:-} ]]; then rm -rf "$BOX_STATE"; fi
    fi
    rm -f "$RAW"
    rm -rf "$PINNED"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-600}
inner=(resources/bench/net-inner.sh "$RUNS" "$SIZE_MIB")
ember_log "$RUNS runs of ${VMMS[*]}; $SIZE_MIB MiB each way, ${EMBER_BENCH_CPUS:-1} vCPU(s)"
inner_rc=0
if resources/box/box.sh need; then
    BOX_STATE=${EMBER_BENCH_BOX_DIR:-/tmp/ember-bench-box-$$}
    ember_log "/dev/kvm here cannot run Linux guests: measuring inside a nested-KVM box ($BOX_STATE)"
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh start --owner $$
    EMBER_BOX_DIR=$BOX_STATE EMBER_BENCH_GUEST_TIMEOUT=$GUEST_TIMEOUT resources/box/box.sh exec \
        --timeout $((RUNS * ${#VMMS[@]} * (1 + ${EMBER_BENCH_RETRIES:-1}) * (GUEST_TIMEOUT + 30) + 600)) \
        -- "${inner[@]}" >"$RAW" || inner_rc=$?
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
else
    [[ $(id -u) == 0 ]] || ember_die "creating the tap device needs root"
    EMBER_BENCH_GUEST_TIMEOUT=$GUEST_TIMEOUT "${inner[@]}" >"$RAW" || inner_rc=$?
fi
[[ -n ${EMBER_BENCH_RAW:-} ]] && cp "$RAW" "$EMBER_BENCH_RAW"
T_TOTAL=$(($(date +%s) - T_START))

# --- report -------------------------------------------------------------------------
# awk prints the tables and exits 1 when a (vmm, run) lacks tx or rx.
report_rc=0
awk -v runs="$RUNS" -v size_mib="$SIZE_MIB" -v total="$T_TOTAL" -v vmms="${VMMS[*]}" \
    -v cpus="${EMBER_BENCH_CPUS:-1}" '
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
function fmt_rate(x,    g) {            # MiB/s (Gbit/s)
    if (x == "") return "-"
    g = x * 1048576 * 8 / 1e9
    return sprintf(x < 10 ? "%.2f" : "%.1f", x) sprintf(g < 1 ? " (%.3f)" : " (%.2f)", g)
}
function ratio(a, b) {
    return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-"
}
# Median (min-max) of the per-run ratios A/B: the two VMMs of one run ran
# close together, so their ratio cancels slow drifts of the machine.
function paired(a, b, d,    r, pr, pairs, lo, hi, pm) {
    pairs = ""; lo = ""; hi = ""
    for (r = 1; r <= runs; r++)
        if (have[a, r, d] && have[b, r, d] && val[b, r, d] > 0) {
            pr = val[a, r, d] / val[b, r, d]
            pairs = pairs " " pr
            if (lo == "" || pr < lo) lo = pr
            if (hi == "" || pr > hi) hi = pr
        }
    pm = median(pairs)
    return pm == "" ? "-" : sprintf("%.2f (%.2f-%.2f)", pm, lo, hi)
}
function field(name,    i) {
    for (i = 1; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
    return ""
}
function dashes(n,    s) { s = ""; while (n-- > 0) s = s "-"; return s }
function fmt_secs(x) { return x == "" ? "-" : sprintf("%.1fs", x) }
$1 == "RESULT" && (field("dir") == "tx" || field("dir") == "rx") {
    v = field("vmm"); r = field("run"); d = field("dir")
    secs = field("secs") + 0; bytes = field("bytes") + 0
    if (secs <= 0) secs = 0.001
    rate = bytes / 1048576 / secs
    mib[v, d] = mib[v, d] " " rate
    have[v, r, d] = 1
    val[v, r, d] = rate
    hs = field("host_secs") + 0
    hrate = hs > 0 ? sprintf("%.1f", field("host_bytes") / 1048576 / hs) : "-"
    raw[++nraw] = sprintf("%-4s %-12s %-3s %9.1f %8.3f %11s %10s", r, v, d, rate, secs, hrate, field("host_secs"))
}
$1 == "RESULT" && field("dir") == "ping" {
    v = field("vmm"); r = field("run")
    rtt[v] = rtt[v] " " field("avg_ms")
    pings[++nping] = sprintf("%-4s %-12s ping %s/%s/%s ms", r, v, field("min_ms"), field("avg_ms"), field("max_ms"))
}
$1 == "GUEST" && field("results") == 2 {
    v = field("vmm"); wall[v] = wall[v] " " field("wall")
}
$1 == "FAILED" {
    failed[++nfailed] = sprintf("%s run %s attempt %s: exit status %s after %ss, %s of 2 results",
        field("vmm"), field("run"), field("attempt"), field("status"), field("wall"), field("results"))
}
END {
    split("tx rx", dirs, " ")
    name["tx"] = "guest->host"; name["rx"] = "host->guest"
    nv = split(vmms, vl, " ")
    missing = 0
    for (r = 1; r <= runs; r++)
        for (k = 1; k <= nv; k++)
            for (i = 1; i <= 2; i++)
                if (!have[vl[k], r, dirs[i]]) { missing++; miss = miss sprintf(" %s/run%d/%s", vl[k], r, dirs[i]) }
    title["ember"] = "Ember"; title["ember-nooff"] = "Ember no-offload"
    title["qemu"] = "QEMU"; title["qemu-nooff"] = "QEMU no-offload"; title["qemu-vhost"] = "QEMU vhost"
    printf "\nvirtio-net TCP throughput, guest <-> host over a tap (ember-stream, %d MiB each way, %d vCPU, 256 MiB)\n", size_mib, cpus
    printf "medians of %d run(s); MiB/s (Gbit/s), as the guest measured it\n", runs
    printf "Ember/QEMU: ratio of the medians, then median (min-max) of the per-run ratios\n"
    printf "offload on/off: Ember with offloads (csum, TSO) over Ember with offload=off, per-run\n\n"
    hdr = "| direction   "; sep = "|-------------"
    for (k = 1; k <= nv; k++) {
        w[k] = length(title[vl[k]] " MiB/s"); if (w[k] < 14) w[k] = 14
        hdr = hdr sprintf("| %-*s ", w[k], title[vl[k]] " MiB/s")
        sep = sep "|" dashes(w[k] + 1) ":"
    }
    hdr = hdr "| Ember/QEMU | per-run Ember/QEMU  | offload on/off      |"
    sep = sep "|-----------:|--------------------:|--------------------:|"
    print hdr; print sep
    for (i = 1; i <= 2; i++) {
        d = dirs[i]
        line = sprintf("| %-11s ", name[d])
        for (k = 1; k <= nv; k++) line = line sprintf("| %*s ", w[k], fmt_rate(median(mib[vl[k], d])))
        line = line sprintf("| %10s | %19s | %19s |", ratio(median(mib["ember", d]), median(mib["qemu", d])),
            paired("ember", "qemu", d), paired("ember", "ember-nooff", d))
        print line
    }
    line = "\nmedian ping round trip (20 pings, 0.2 s apart, avg of each guest):"
    for (k = 1; k <= nv; k++) {
        m = median(rtt[vl[k]])
        line = line sprintf(" %s %s;", title[vl[k]], m == "" ? "-" : sprintf("%.2f ms", m))
    }
    print substr(line, 1, length(line) - 1)
    line = "median wall time per guest (boot, ping, both transfers, exit):"
    for (k = 1; k <= nv; k++) line = line sprintf(" %s %s;", title[vl[k]], fmt_secs(median(wall[vl[k]])))
    print substr(line, 1, length(line) - 1)
    printf "total benchmark time: %dm%02ds\n", total / 60, total % 60
    printf "\nraw results (tx: guest->host, rx: host->guest; host MiB/s: the host end'"'"'s own clock):\n"
    printf "%-4s %-12s %-3s %9s %8s %11s %10s\n", "run", "vmm", "dir", "MiB/s", "secs", "host MiB/s", "host secs"
    for (i = 1; i <= nraw; i++) print raw[i]
    for (i = 1; i <= nping; i++) print pings[i]
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
    ember_log "FAILED: some runs did not produce both results (measuring status $inner_rc)"
    exit 1
fi

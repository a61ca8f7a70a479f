#!/usr/bin/env bash
# boot.sh: boot time to the guest's /init and whole-run time to its reboot,
# Ember side by side with QEMU's microvm machine (Debian's qemu-system-x86)
# booting the same kernel, initramfs and command line. See docs/performance.md,
# "Boot time".
#
#   resources/bench/boot.sh [RUNS]
#
# RUNS (default 5): boots of each VMM per kernel and configuration; Ember and
#   QEMU alternate, the order swapping from run to run, and the table shows
#   medians.
#
# Kernels: the minimal microVM kernel (build/kernel/vmlinux, PVH ELF, from
# resources/kernel/build.sh) and Debian's cloud kernel (build/guest/vmlinuz,
# bzImage), each in two configurations, 1 vCPU/128 MiB and 2 vCPUs/512 MiB;
# the test initramfs (resources/guest/build.sh) whose /init prints
# EMBER-INIT-OK and reboots. Every boot runs under boot-stamp
# (resources/bench/boot-stamp.c), which takes CLOCK_MONOTONIC just before it
# execs the VMM, when EMBER-INIT-OK appears on the VMM's stdout (the guest's
# serial console) and when the VMM has exited. Ember also runs with
# --boot-timer: /init's first act (ember-mark) writes to port 0x3f0 and Ember
# logs the time, where the guest kernel allows it (ioperm).
#
# Builds Ember (cargo build --release), the microVM kernel, the test guest
# and boot-stamp, installs qemu-system-x86 if missing, and runs
# resources/bench/boot-inner.sh once, inside a private nested-KVM box when
# `resources/box/box.sh need` says this /dev/kvm cannot run Linux (state in
# $EMBER_BENCH_BOX_DIR, default /tmp/ember-bench-box-<pid>; stopped on exit),
# else directly.
#
# Prints per kernel and configuration the median time to /init (console line)
# of each VMM and their ratio, Ember's median boot-timer time, the median
# whole-run time (exec to exit after the guest's reboot) of each VMM and their
# ratio, then the raw times. A boot that fails is retried once
# (EMBER_BENCH_RETRIES, default 1) and listed. Exit status 0 when every boot
# succeeded, 1 otherwise; non-zero too on build or box failures. With the
# defaults, in the box: about 10 minutes on a quiet 2-core host (a boot that
# hangs costs its 120 s timeout more).
#
# Environment: EMBER_BENCH_RETRIES, EMBER_BENCH_BOX_DIR,
# EMBER_BENCH_GUEST_TIMEOUT (seconds per boot, default 120),
# EMBER_BENCH_KERNELS ("microvm debian"), EMBER_BENCH_CONFIGS ("1x128 2x512",
# CPUSxMIB), EMBER_BENCH_RAW=FILE (also save the raw result lines to FILE),
# EMBER_BENCH_EMBER=PATH (another ember binary to measure, e.g. a build from
# before a change; default target/release/ember), EMBER_BENCH_EMBER_ARGS (extra
# arguments for every Ember run, e.g. --no-huge-pages).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh
EMBER_LOG_TAG=bench/boot.sh
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { bench_usage 7,7; }
(($# <= 1)) || usage
RUNS=${1:-5}
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || { ember_log "RUNS must be a positive integer, got '$RUNS'"; usage; }
[[ ${EMBER_BENCH_RETRIES:-1} =~ ^[0-9]$ ]] || ember_die "EMBER_BENCH_RETRIES must be 0 to 9"
GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-120}
[[ $GUEST_TIMEOUT =~ ^[1-9][0-9]{0,4}$ ]] || ember_die "EMBER_BENCH_GUEST_TIMEOUT must be a positive integer"
KERNELS=${EMBER_BENCH_KERNELS:-microvm debian}
CONFIGS=${EMBER_BENCH_CONFIGS:-1x128 2x512}
n_kernels=$(wc -w <<<"$KERNELS")
n_configs=$(wc -w <<<"$CONFIGS")
((n_kernels >= 1 && n_configs >= 1)) || ember_die "EMBER_BENCH_KERNELS and EMBER_BENCH_CONFIGS must not be empty"

T_START=$(date +%s)

# --- build -------------------------------------------------------------------------
initramfs_has_mark() {
    resources/guest/build.sh &&
        gzip -dc build/guest/initramfs.cpio.gz | cpio -it --quiet 2>/dev/null |
        grep -x 'bin/ember-mark' >/dev/null # (not -q: an early exit would fail the pipe)
}
ember_has_boot_timer() {
    cargo build --release --quiet &&
        target/release/ember run --help 2>&1 | grep -e '--boot-timer' >/dev/null
}

STAMP=build/bench/boot/boot-stamp
command -v cargo >/dev/null || ember_die "cargo is not installed (Rust toolchain required)"
ember_need qemu-system-x86_64=qemu-system-x86 gcc=gcc /usr/lib/x86_64-linux-gnu/libc.a=libc6-dev \
    cpio=cpio gzip=gzip ldd=libc-bin
bench_retry "cargo build --release (with --boot-timer)" ember_has_boot_timer
if [[ " $KERNELS " == *" microvm "* ]]; then
    # Idempotent: a second or so when build/kernel/ is up to date, ~8 minutes otherwise.
    bench_retry "the microVM kernel (resources/kernel/build.sh)" resources/kernel/build.sh
fi
bench_retry "the test initramfs with /bin/ember-mark" initramfs_has_mark
mkdir -p "${STAMP%/*}"
gcc -O2 -Wall -Wextra -static -o "$STAMP.tmp" "$HERE/boot-stamp.c" || ember_die "cannot build boot-stamp"
mv "$STAMP.tmp" "$STAMP"

# --- measure ------------------------------------------------------------------------
RAW=$(mktemp "${TMPDIR:-/tmp}/ember-bootbench-raw.XXXXXX")
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

inner=(resources/bench/boot-inner.sh "$RUNS" "$ROOT/$STAMP")
ember_log "$RUNS runs; kernels: $KERNELS; configurations (vCPUs x MiB): $CONFIGS"
inner_rc=0
inner_env=(EMBER_BENCH_GUEST_TIMEOUT="$GUEST_TIMEOUT" EMBER_BENCH_KERNELS="$KERNELS" EMBER_BENCH_CONFIGS="$CONFIGS")
if resources/box/box.sh need; then
    BOX_STATE=${EMBER_BENCH_BOX_DIR:-/tmp/ember-bench-box-$$}
    ember_log "/dev/kvm here cannot run Linux guests: measuring inside a nested-KVM box ($BOX_STATE)"
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh start --owner $$
    boots=$((RUNS * n_kernels * n_configs * 2 + 2))
    env EMBER_BOX_DIR="$BOX_STATE" "${inner_env[@]}" resources/box/box.sh exec \
        --timeout $((boots * (1 + ${EMBER_BENCH_RETRIES:-1}) * (GUEST_TIMEOUT + 10) + 600)) -- "${inner[@]}" >"$RAW" || inner_rc=$?
    EMBER_BOX_DIR=$BOX_STATE resources/box/box.sh stop >/dev/null 2>&1 || true
else
    env "${inner_env[@]}" "${inner[@]}" >"$RAW" || inner_rc=$?
fi
[[ -n ${EMBER_BENCH_RAW:-} ]] && cp "$RAW" "$EMBER_BENCH_RAW"
T_TOTAL=$(($(date +%s) - T_START))

# --- report -------------------------------------------------------------------------
# awk prints the tables and exits 1 when a (vmm, kernel, config, run) has no BOOT line.
report_rc=0
awk -v runs="$RUNS" -v kernels="$KERNELS" -v configs="$CONFIGS" -v total="$T_TOTAL" '
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
function ms(x) { return x == "" ? "-" : sprintf("%.0f", x) }
function ratio(a, b) { return (a == "" || b == "" || b <= 0) ? "-" : sprintf("%.2f", a / b) }
function field(name,    i) {
    for (i = 1; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
    return ""
}
$1 == "BOOT" {
    v = field("vmm"); k = field("kernel"); c = field("config"); r = field("run")
    s = field("start_ns"); i = field("init_ns"); e = field("exit_ns"); t = field("timer_ns")
    key = v SUBSEP k SUBSEP c
    init_ms = (i - s) / 1e6; exit_ms = (e - s) / 1e6
    init[key] = init[key] " " init_ms
    whole[key] = whole[key] " " exit_ms
    if (t + 0 > 0) timer[key] = timer[key] " " (t - s) / 1e6
    have[v, k, c, r] = 1
    val[v, k, c, r] = init_ms
    raw[++nraw] = sprintf("%-4s %-6s %-8s %-6s %9.0f %9s %9.0f", r, v, k, c, init_ms,
        t + 0 > 0 ? sprintf("%.0f", (t - s) / 1e6) : "-", exit_ms)
}
$1 == "FAILED" {
    failed[++nfailed] = sprintf("%s %s %s run %s attempt %s: exit status %s, init_ns=%s, timer_ns=%s",
        field("vmm"), field("kernel"), field("config"), field("run"), field("attempt"),
        field("status"), field("init_ns"), field("timer_ns"))
}
END {
    nk = split(kernels, ks, " "); nc = split(configs, cs, " ")
    split("ember qemu", vmms, " ")
    missing = 0
    for (r = 1; r <= runs; r++)
        for (a = 1; a <= nk; a++)
            for (b = 1; b <= nc; b++)
                for (m = 1; m <= 2; m++)
                    if (!have[vmms[m], ks[a], cs[b], r]) {
                        missing++
                        miss = miss sprintf(" %s/%s/%s/run%d", vmms[m], ks[a], cs[b], r)
                    }
    printf "\nBoot time, medians of %d run(s), in ms from the VMM'"'"'s exec:\n", runs
    printf "  to /init = EMBER-INIT-OK on the serial console; boot timer = Ember'"'"'s port-0x3f0 log\n"
    printf "  (\"-\": the kernel has no ioperm); to exit = the VMM'"'"'s exit after the guest'"'"'s reboot\n\n"
    printf "| kernel  | vCPUs/MiB | Ember to /init | QEMU to /init | Ember/QEMU | Ember boot timer | Ember to exit | QEMU to exit | Ember/QEMU |\n"
    printf "|---------|-----------|---------------:|--------------:|-----------:|-----------------:|--------------:|-------------:|-----------:|\n"
    for (a = 1; a <= nk; a++)
        for (b = 1; b <= nc; b++) {
            k = ks[a]; c = cs[b]
            ei = median(init["ember", k, c]); qi = median(init["qemu", k, c])
            et = median(timer["ember", k, c])
            ee = median(whole["ember", k, c]); qe = median(whole["qemu", k, c])
            cfg = c; sub(/x/, "/", cfg)
            printf "| %-7s | %-9s | %14s | %13s | %10s | %16s | %13s | %12s | %10s |\n", k, cfg,
                ms(ei), ms(qi), ratio(ei, qi), ms(et), ms(ee), ms(qe), ratio(ee, qe)
        }
    # Ember and QEMU of one run booted back to back: their ratio cancels slow
    # drifts of a shared host; its median and range over the runs.
    printf "\nSpread of the time to /init: min-max of each VMM, per-run Ember/QEMU median (min-max)\n\n"
    printf "| kernel  | vCPUs/MiB | Ember min-max | QEMU min-max | per-run Ember/QEMU |\n"
    printf "|---------|-----------|--------------:|-------------:|-------------------:|\n"
    for (a = 1; a <= nk; a++)
        for (b = 1; b <= nc; b++) {
            k = ks[a]; c = cs[b]
            pairs = ""; plo = ""; phi = ""
            for (m = 1; m <= 2; m++) { lo[m] = ""; hi[m] = "" }
            for (r = 1; r <= runs; r++) {
                for (m = 1; m <= 2; m++)
                    if (have[vmms[m], k, c, r]) {
                        x = val[vmms[m], k, c, r]
                        if (lo[m] == "" || x < lo[m]) lo[m] = x
                        if (hi[m] == "" || x > hi[m]) hi[m] = x
                    }
                if (have["ember", k, c, r] && have["qemu", k, c, r] && val["qemu", k, c, r] > 0) {
                    pr = val["ember", k, c, r] / val["qemu", k, c, r]
                    pairs = pairs " " pr
                    if (plo == "" || pr < plo) plo = pr
                    if (phi == "" || pr > phi) phi = pr
                }
            }
            pm = median(pairs)
            cfg = c; sub(/x/, "/", cfg)
            printf "| %-7s | %-9s | %13s | %12s | %18s |\n", k, cfg,
                lo[1] == "" ? "-" : sprintf("%.0f-%.0f", lo[1], hi[1]),
                lo[2] == "" ? "-" : sprintf("%.0f-%.0f", lo[2], hi[2]),
                pm == "" ? "-" : sprintf("%.2f (%.2f-%.2f)", pm, plo, phi)
        }
    printf "\ntotal benchmark time: %dm%02ds\n", total / 60, total % 60
    printf "\nraw times (ms from exec):\n%-4s %-6s %-8s %-6s %9s %9s %9s\n", "run", "vmm", "kernel", "config",
        "to-init", "timer", "to-exit"
    for (i = 1; i <= nraw; i++) print raw[i]
    if (nfailed) {
        printf "\nfailed boots (%d; a failed boot is retried up to EMBER_BENCH_RETRIES times):\n", nfailed
        for (i = 1; i <= nfailed; i++) print "  " failed[i]
    }
    if (missing) {
        printf "\nmissing results (%d):%s\n", missing, miss
        exit 1
    }
}' "$RAW" || report_rc=$?

if ((inner_rc != 0 || report_rc != 0)); then
    ember_log "FAILED: some boots did not succeed (measuring status $inner_rc)"
    exit 1
fi

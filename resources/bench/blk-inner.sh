#!/usr/bin/env bash
# blk-inner.sh: the measuring half of resources/bench/blk.sh. Runs where
# /dev/kvm can run Linux guests (inside the nested-KVM box, or directly on a
# host with hardware KVM); blk.sh builds everything first and calls it once.
#
#   blk-inner.sh RUNS SEQ_MIB RAND_MIB
#
# Creates a raw disk image in /dev/shm (tmpfs: max(2*SEQ_MIB, 2*RAND_MIB, 256)
# MiB, every page written with a non-zero pattern so guest reads hit real
# pages), then for each run boots Ember and QEMU (-M microvm) one after the
# other, the order alternating from run to run (odd runs Ember first, even
# runs QEMU first). Each guest (Debian cloud kernel + the test initramfs,
# 1 vCPU, 256 MiB) runs `blkbench /dev/vda MODE SEQ_MIB` for seqread and
# seqwrite, then `blkbench /dev/vda MODE RAND_MIB` for randread and randwrite.
# Prints one line per measurement on stdout:
#
#   RESULT vmm=<ember|qemu> run=<n> mode=<m> bytes=<n> secs=<s> mibps=<x> iops=<n>
#
# and one "GUEST vmm=<v> run=<n> status=<rc> wall=<secs> results=<k>
# attempts=<a>" line per guest. A guest that does not print its 4 results
# (nested SVM under TCG occasionally resets a guest silently) is booted again,
# up to EMBER_BENCH_RETRIES times (default 1); each failed attempt prints a
# "FAILED vmm=<v> run=<n> attempt=<a> status=<rc> wall=<s> results=<k>" line
# and, on stderr, the tail of its console. Progress goes to stderr. Exits 1 if
# any guest still lacks its 4 results.
#
# Settings (environment): EMBER_BENCH_GUEST_TIMEOUT (seconds per guest, 900),
# EMBER_BENCH_RETRIES (1), EMBER_BENCH_QEMU (qemu-system-x86_64),
# EMBER_BENCH_SCRATCH (/dev/shm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf 'blk-inner: %s\n' "$*" >&2; }
die() { printf 'blk-inner: error: %s\n' "$*" >&2; exit 1; }

(($# == 3)) || die "usage: blk-inner.sh RUNS SEQ_MIB RAND_MIB"
RUNS=$1 SEQ_MIB=$2 RAND_MIB=$3
for n in "$RUNS" "$SEQ_MIB" "$RAND_MIB"; do
    [[ $n =~ ^[1-9][0-9]{0,5}$ ]] || die "RUNS, SEQ_MIB and RAND_MIB must be positive integers, got '$n'"
done

EMBER=$ROOT/target/release/ember
KERNEL=$ROOT/build/guest/vmlinuz
INITRD=$ROOT/build/guest/initramfs.cpio.gz
QEMU=${EMBER_BENCH_QEMU:-qemu-system-x86_64}
GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-900}
RETRIES=${EMBER_BENCH_RETRIES:-1}
[[ $RETRIES =~ ^[0-9]$ ]] || die "EMBER_BENCH_RETRIES must be 0 to 9, got '$RETRIES'"
MODES=(seqread seqwrite randread randwrite)

for f in "$EMBER" "$KERNEL" "$INITRD"; do [[ -f $f ]] || die "$f is missing (run resources/bench/blk.sh)"; done
command -v "$QEMU" >/dev/null || die "$QEMU not found"
[[ -w /dev/kvm ]] || die "/dev/kvm is not usable here"

WORK=$(mktemp -d "${EMBER_BENCH_SCRATCH:-/dev/shm}/ember-blkbench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- the disk image ------------------------------------------------------------
IMG_MIB=256
((2 * SEQ_MIB > IMG_MIB)) && IMG_MIB=$((2 * SEQ_MIB))
((2 * RAND_MIB > IMG_MIB)) && IMG_MIB=$((2 * RAND_MIB))
IMG=$WORK/disk.img
# A repeating non-zero pattern: tmpfs allocates every page, and no layer can
# treat the data as zeroes.
t0=$(date +%s.%N)
# (1 MiB made by tr, then doubled with cat: tr alone takes ~20 s for 256 MiB
# under nested emulation.)
head -c 1048576 /dev/zero | LC_ALL=C tr '\0' '\132' >"$IMG"
have=1
while ((have < IMG_MIB)); do
    if ((2 * have <= IMG_MIB)); then
        cat "$IMG" "$IMG" >"$IMG.tmp"
        have=$((2 * have))
    else
        { cat "$IMG"; head -c "$(((IMG_MIB - have) * 1048576))" "$IMG"; } >"$IMG.tmp"
        have=$IMG_MIB
    fi
    mv "$IMG.tmp" "$IMG"
done
[[ $(stat -c %s "$IMG") == $((IMG_MIB * 1024 * 1024)) ]] || die "cannot create the ${IMG_MIB} MiB image $IMG"
log "image: $IMG_MIB MiB in $WORK ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s)"

# --- the guest script ------------------------------------------------------------
# /init loads virtio_mmio and virtio_blk; the disk may still be probing.
script="ember-wait -t 20 /dev/vda || { echo BLKBENCH-ERROR no /dev/vda; exit 1; }"
for m in "${MODES[@]}"; do
    size=$SEQ_MIB
    [[ $m == rand* ]] && size=$RAND_MIB
    script+="; blkbench /dev/vda $m $size || echo BLKBENCH-ERROR mode=$m status=\$?"
done
B64=$(printf '%s\n' "$script" | base64 -w0)
CMDLINE_TAIL="panic=1 pci=off quiet ember.script=$B64"

run_ember() { # CONSOLE_LOG
    timeout -k 10 "$GUEST_TIMEOUT" "$EMBER" run --kernel "$KERNEL" --initrd "$INITRD" \
        --cmdline "console=ttyS0 reboot=k $CMDLINE_TAIL" \
        --cpus 1 --memory 256M --disk "path=$IMG" --serial stdio \
        </dev/null >"$1" 2>&1
}

# microvm has no i8042 keyboard controller, so the guest reboots by triple
# fault (reboot=t), which -no-reboot turns into QEMU exiting. The guest finds
# the disk through ACPI (LNRO0005), as with Ember. virtio-mmio.force-legacy=false
# makes QEMU's transport virtio 1.0 (VERSION_1), like Ember's: QEMU 7.2's
# virtio-mmio defaults to the legacy (pre-1.0) register interface. The disk is QEMU's default for a raw file: cache=writeback (host page cache,
# flushes honoured), aio=threads; Ember also does buffered I/O on the image.
run_qemu() { # CONSOLE_LOG
    timeout -k 10 "$GUEST_TIMEOUT" "$QEMU" -M microvm,acpi=on -global virtio-mmio.force-legacy=false \
        -enable-kvm -cpu host \
        -smp 1 -m 256 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 reboot=t $CMDLINE_TAIL" \
        -drive "id=d0,file=$IMG,format=raw,if=none" -device virtio-blk-device,drive=d0 \
        </dev/null >"$1" 2>&1
}

# guest VMM RUN: boot one guest (retrying a failed boot up to RETRIES times) and
# print its RESULT lines and one GUEST line.
failures=0
guest() { # VMM RUN
    local vmm=$1 run=$2 console=$WORK/$1-$2.log attempt rc t0 t1 wall n lines line
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        rc=0
        t0=$(date +%s.%N)
        "run_$vmm" "$console" || rc=$?
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        # (No process substitution: the box's chroot has no /dev/fd.)
        lines=$(tr -d '\r' <"$console" | grep -E '^BLKBENCH mode=' || true)
        n=0
        [[ -n $lines ]] && n=$(wc -l <<<"$lines")
        log "run $run/$RUNS $vmm: status $rc, ${wall}s, $n of ${#MODES[@]} results (attempt $attempt)"
        ((n == ${#MODES[@]})) && break
        printf 'FAILED vmm=%s run=%s attempt=%s status=%s wall=%s results=%s\n' \
            "$vmm" "$run" "$attempt" "$rc" "$wall" "$n"
        log "$vmm run $run attempt $attempt failed (exit status $rc); last lines of its console:"
        tr -d '\r' <"$console" | tail -n 25 | sed 's/^/    | /' >&2
    done
    while IFS= read -r line; do
        [[ -n $line ]] || continue
        printf 'RESULT vmm=%s run=%s %s\n' "$vmm" "$run" "${line#BLKBENCH }"
    done <<<"$lines"
    printf 'GUEST vmm=%s run=%s status=%s wall=%s results=%s attempts=%s\n' \
        "$vmm" "$run" "$rc" "$wall" "$n" "$((attempt > 1 + RETRIES ? attempt - 1 : attempt))"
    ((n == ${#MODES[@]})) || failures=$((failures + 1))
}

for ((run = 1; run <= RUNS; run++)); do
    if ((run % 2)); then order=(ember qemu); else order=(qemu ember); fi
    for vmm in "${order[@]}"; do guest "$vmm" "$run"; done
done

((failures == 0)) || die "$failures guest(s) did not produce all ${#MODES[@]} BLKBENCH lines"

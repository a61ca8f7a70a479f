#!/usr/bin/env bash
# boot-inner.sh: the measuring half of resources/bench/boot.sh. Runs where
# /dev/kvm can run Linux guests (inside the nested-KVM box, or directly on a
# host with hardware KVM); boot.sh builds everything first and calls it once.
#
#   boot-inner.sh RUNS STAMP
#
# STAMP is the boot-stamp binary (resources/bench/boot-stamp.c). Copies the
# kernels and the initramfs to a scratch directory in /dev/shm (not the box's
# slow 9p share), boots each VMM once unmeasured (warm-up), then for each run,
# each kernel and each configuration boots Ember and QEMU (-M microvm) one
# after the other, the order alternating from run to run (odd runs Ember
# first). Every guest runs the test initramfs's /init with the default action
# (print EMBER-INIT-OK, reboot) under boot-stamp, which prints CLOCK_MONOTONIC
# times of the VMM's exec, of EMBER-INIT-OK on its console, and of its exit.
# Prints one line per guest on stdout:
#
#   BOOT vmm=<ember|qemu> kernel=<microvm|debian> config=<CPUS>x<MIB> run=<n>
#        start_ns=<ns> init_ns=<ns> exit_ns=<ns> status=<rc> timer_ns=<ns|-1>
#
# (one line; timer_ns: Ember's boot-timer time, -1 for QEMU). A guest whose
# VMM did not exit 0 after printing EMBER-INIT-OK (or, for Ember, without a
# boot-timer line) is booted again, up to EMBER_BENCH_RETRIES times (default
# 1); each failed attempt prints "FAILED vmm=.. kernel=.. config=.. run=..
# attempt=.. <the boot-stamp fields>" and, on stderr, the tail of its console.
# Progress goes to stderr. Exits 1 if any guest still failed.
#
# Settings (environment): EMBER_BENCH_GUEST_TIMEOUT (seconds per guest, 120),
# EMBER_BENCH_RETRIES (1), EMBER_BENCH_QEMU (qemu-system-x86_64),
# EMBER_BENCH_EMBER (target/release/ember), EMBER_BENCH_EMBER_ARGS (extra
# arguments for every Ember run, split on spaces, e.g. --no-huge-pages),
# EMBER_BENCH_SCRATCH (/dev/shm), EMBER_BENCH_KERNELS ("microvm debian"),
# EMBER_BENCH_CONFIGS ("1x128 2x512").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf 'boot-inner: %s\n' "$*" >&2; }
die() { printf 'boot-inner: error: %s\n' "$*" >&2; exit 1; }

(($# == 2)) || die "usage: boot-inner.sh RUNS STAMP"
RUNS=$1 STAMP=$2
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ -x $STAMP ]] || die "$STAMP is not an executable (boot-stamp)"

EMBER=${EMBER_BENCH_EMBER:-$ROOT/target/release/ember}
read -r -a EMBER_ARGS <<<"${EMBER_BENCH_EMBER_ARGS:-}"
INITRD_SRC=$ROOT/build/guest/initramfs.cpio.gz
declare -A KERNEL_SRC=(
    [microvm]=$ROOT/build/kernel/vmlinux # PVH ELF (resources/kernel/build.sh)
    [debian]=$ROOT/build/guest/vmlinuz   # bzImage (Debian cloud kernel)
)
declare -A KERNEL_CONFIG=(
    [microvm]=$ROOT/build/kernel/config
    [debian]=$ROOT/build/guest/kernel-pkg/boot/config-$(cat "$ROOT/build/guest/kernel-version" 2>/dev/null)
)
QEMU=${EMBER_BENCH_QEMU:-qemu-system-x86_64}
GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-120}
RETRIES=${EMBER_BENCH_RETRIES:-1}
KERNELS=${EMBER_BENCH_KERNELS:-microvm debian}
CONFIGS=${EMBER_BENCH_CONFIGS:-1x128 2x512}
[[ $RETRIES =~ ^[0-9]$ ]] || die "EMBER_BENCH_RETRIES must be 0 to 9, got '$RETRIES'"
[[ $GUEST_TIMEOUT =~ ^[1-9][0-9]{0,4}$ ]] || die "EMBER_BENCH_GUEST_TIMEOUT must be a positive integer"
for k in $KERNELS; do
    [[ -n ${KERNEL_SRC[$k]:-} ]] || die "unknown kernel '$k' in EMBER_BENCH_KERNELS (microvm, debian)"
done
for c in $CONFIGS; do
    [[ $c =~ ^[1-9]x[1-9][0-9]{1,4}$ ]] || die "bad configuration '$c' in EMBER_BENCH_CONFIGS (CPUSxMIB)"
done

for f in "$EMBER" "$INITRD_SRC"; do [[ -f $f ]] || die "$f is missing (run resources/bench/boot.sh)"; done
for k in $KERNELS; do [[ -f ${KERNEL_SRC[$k]} ]] || die "${KERNEL_SRC[$k]} is missing (run resources/bench/boot.sh)"; done
QEMU=$(command -v "$QEMU") || die "${EMBER_BENCH_QEMU:-qemu-system-x86_64} not found"
[[ -w /dev/kvm ]] || die "/dev/kvm is not usable here"

WORK=$(mktemp -d "${EMBER_BENCH_SCRATCH:-/dev/shm}/ember-bootbench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Everything a boot reads goes to tmpfs first: inside the box the repository
# and the whole root file system are the host's, over 9p, where every file
# access is a round trip to the host. Reading QEMU's 50 shared libraries that
# way took 2 to 6 s per start (0.6 to 0.8 s from tmpfs), and that would be
# timed as VMM startup. So the kernels, the initramfs, both VMM binaries with
# their shared libraries, and QEMU's firmware files are copied to $WORK, and
# each VMM runs through its copied dynamic loader (ld.so --library-path DIR
# BINARY), both the same way.
declare -A KERNEL TIMER
for k in $KERNELS; do
    KERNEL[$k]=$WORK/kernel-$k
    cp "${KERNEL_SRC[$k]}" "${KERNEL[$k]}"
    # Ember's boot timer needs /init's ember-mark, which needs ioperm(2):
    # CONFIG_X86_IOPL_IOPERM. The microVM kernel's config leaves it out.
    TIMER[$k]=0
    [[ -f ${KERNEL_CONFIG[$k]} ]] && grep -qx 'CONFIG_X86_IOPL_IOPERM=y' "${KERNEL_CONFIG[$k]}" && TIMER[$k]=1
done
INITRD=$WORK/initramfs.cpio.gz
cp "$INITRD_SRC" "$INITRD"
cp "$STAMP" "$WORK/boot-stamp"
STAMP=$WORK/boot-stamp

# stage NAME BINARY: copy BINARY and the shared libraries ldd lists to
# $WORK/NAME/{bin,lib}; set RUN_NAME to the command that runs the copy.
stage() {
    local name=$1 bin=$2 dir=$WORK/$1 lib libs loader=
    mkdir -p "$dir/bin" "$dir/lib"
    cp "$bin" "$dir/bin/"
    # (No process substitution: the box's chroot has no /dev/fd.)
    libs=$(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') || true
    while read -r lib; do
        [[ -n $lib ]] || continue
        cp -L "$lib" "$dir/lib/"
        [[ $lib == */ld-linux* ]] && loader=$dir/lib/${lib##*/}
    done <<<"$libs"
    # shellcheck disable=SC2034 # cmd is a nameref to RUN_ember or RUN_qemu
    local -n cmd=RUN_$name
    # shellcheck disable=SC2034
    if [[ -n $loader ]]; then
        cmd=("$loader" --library-path "$dir/lib" "$dir/bin/${bin##*/}")
    else
        cmd=("$dir/bin/${bin##*/}") # static
    fi
}
RUN_ember=() RUN_qemu=()
stage ember "$EMBER"
stage qemu "$QEMU"
# QEMU's firmware: qboot (bios-microvm.bin) and the option ROMs that load a
# bzImage (linuxboot_dma.bin) or a PVH ELF (pvh.bin); -L searches there first.
QEMU_DATA=$WORK/qemu/share
mkdir -p "$QEMU_DATA"
for f in bios-microvm.bin linuxboot_dma.bin pvh.bin; do
    src=$(dirname "$QEMU")/../share/qemu/$f
    [[ -e $src ]] || die "$src is missing"
    cp -L "$src" "$QEMU_DATA/$f"
done

# The same command line for both VMMs. quiet: every console byte is a VM exit.
# ember.boottimer makes /init write 123 to port 0x3f0 first thing: Ember's boot
# timer logs it; on QEMU nothing is at that port and the write is dropped (one
# exit, as on Ember).
CMDLINE="console=ttyS0 reboot=k panic=1 pci=off quiet ember.boottimer"
PATTERN="EMBER-INIT-OK"

run_ember() { # KERNEL CPUS MIB OUT ERR
    "$STAMP" -t "$GUEST_TIMEOUT" -o "$4" -e "$5" -p "$PATTERN" -- \
        "${RUN_ember[@]}" run --kernel "$1" --initrd "$INITRD" --cpus "$2" --memory "$3M" \
        --serial stdio --boot-timer --log-level info "${EMBER_ARGS[@]}" --cmdline "$CMDLINE"
}

# microvm has no i8042 of its own: -device i8042 adds the keyboard controller
# whose reset line reboot=k uses (as on Ember), and -no-reboot turns the reset
# into QEMU exiting. acpi=on (microvm's default) describes the machine to the
# Debian kernel as Ember's ACPI tables do.
run_qemu() { # KERNEL CPUS MIB OUT ERR
    "$STAMP" -t "$GUEST_TIMEOUT" -o "$4" -e "$5" -p "$PATTERN" -- \
        "${RUN_qemu[@]}" -L "$QEMU_DATA" -M microvm,acpi=on -enable-kvm -cpu host -smp "$2" -m "$3" \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot -device i8042 \
        -kernel "$1" -initrd "$INITRD" -append "$CMDLINE"
}

field() { # NAME LINE
    local v=" $2 "
    v=${v#* "$1"=}
    printf '%s' "${v%% *}"
}

# guest VMM KERNEL CONFIG RUN: boot one guest (retrying a failed boot up to
# RETRIES times) and print its BOOT line.
failures=0
guest() {
    local vmm=$1 kernel=$2 config=$3 run=$4 attempt line timer ok
    local cpus=${3%x*} mib=${3#*x} out=$WORK/out err=$WORK/err
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        line=$("run_$vmm" "${KERNEL[$kernel]}" "$cpus" "$mib" "$out" "$err") || line="status=125"
        timer=-1
        if [[ $vmm == ember ]]; then
            timer=$(sed -n 's/.*boot timer: guest signalled at t=\([0-9]*\) ns.*/\1/p' "$err" | head -n1)
            [[ -n $timer ]] || timer=-1
        fi
        ok=1
        [[ $(field status "$line") == 0 && $(field init_ns "$line") =~ ^[0-9]+$ ]] || ok=0
        [[ $vmm == qemu || ${TIMER[$kernel]} == 0 || $timer != -1 ]] || ok=0
        log "run $run/$RUNS $kernel $config $vmm: $line timer_ns=$timer (attempt $attempt)"
        ((ok)) && break
        printf 'FAILED vmm=%s kernel=%s config=%s run=%s attempt=%s %s timer_ns=%s\n' \
            "$vmm" "$kernel" "$config" "$run" "$attempt" "$line" "$timer"
        log "$vmm $kernel $config run $run attempt $attempt failed; last lines of its console and stderr:"
        tr -d '\r' <"$out" | tail -n 20 | sed 's/^/    | /' >&2
        tail -n 10 "$err" | sed 's/^/    ! /' >&2
    done
    if ((ok)); then
        printf 'BOOT vmm=%s kernel=%s config=%s run=%s %s timer_ns=%s\n' \
            "$vmm" "$kernel" "$config" "$run" "$line" "$timer"
    else
        failures=$((failures + 1))
    fi
}

log "$($QEMU --version | head -n1); kernels: $KERNELS; configurations: $CONFIGS"
# Warm-up (not reported): first runs pay for cold caches (binaries, libraries,
# QEMU's firmware files).
first_kernel=${KERNELS%% *}
first_config=${CONFIGS%% *}
for vmm in ember qemu; do
    "run_$vmm" "${KERNEL[$first_kernel]}" "${first_config%x*}" "${first_config#*x}" \
        "$WORK/out" "$WORK/err" >/dev/null || true
done

for ((run = 1; run <= RUNS; run++)); do
    if ((run % 2)); then order=(ember qemu); else order=(qemu ember); fi
    for kernel in $KERNELS; do
        for config in $CONFIGS; do
            for vmm in "${order[@]}"; do guest "$vmm" "$kernel" "$config" "$run"; done
        done
    done
done

((failures == 0)) || die "$failures guest(s) failed to boot to EMBER-INIT-OK and exit 0"

#!/usr/bin/env bash
# memory-inner.sh: the measuring half of resources/bench/memory.sh. Boots a
# guest with Ember and with QEMU (-M microvm), alternating, waits until it is
# up and idle, reads the VMM's /proc/PID/smaps and stops it.
#
#   memory-inner.sh tiny RUNS GUEST_ELF     # halted tiny guest, 128 MiB
#   memory-inner.sh linux RUNS              # idle Linux guest, 256 MiB
#
# tiny: GUEST_ELF (halt-pvh.elf: cli; hlt) runs on this /dev/kvm, 1 vCPU,
#   128 MiB; measured 1 s after start. linux: Debian's cloud kernel
#   (build/guest/vmlinuz) and the test initramfs, 1 vCPU, 256 MiB, `quiet`;
#   the guest runs an ember.script that prints EMBER-IDLE and sleeps; measured
#   5 s after EMBER-IDLE shows on the console. Needs a /dev/kvm that runs Linux
#   (the nested-KVM box here).
#
# Guest RAM is every anonymous mapping at least as large as the guest's memory
# (Ember: exactly one such mapping per RAM region; QEMU: its RAM block). All
# other mappings are the VMM's own: code and data of the binary and its
# libraries (file-backed, shared with other processes), heap, thread stacks,
# malloc arenas, the kvm_run pages, ROMs. Prints one line per VMM and run:
#
#   MEM kind=<tiny|linux> vmm=<ember|qemu> run=<n> rss=<kB> pss=<kB>
#       private=<kB> anon=<kB> guest_rss=<kB> total_rss=<kB> threads=<n>
#
# where rss/pss/private/anon are sums over the non-guest mappings
# (private = Private_Clean + Private_Dirty; anon = Anonymous). Progress and
# errors go to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf 'memory-inner: %s\n' "$*" >&2; }
die() { printf 'memory-inner: error: %s\n' "$*" >&2; exit 1; }

KIND=${1:-}
RUNS=${2:-}
[[ $KIND == tiny || $KIND == linux ]] || die "usage: memory-inner.sh tiny RUNS GUEST_ELF | linux RUNS"
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
EMBER=${EMBER_BENCH_EMBER:-$ROOT/target/release/ember}
QEMU=${EMBER_BENCH_QEMU:-qemu-system-x86_64}
[[ -x $EMBER ]] || die "$EMBER is missing (run resources/bench/memory.sh)"
command -v "$QEMU" >/dev/null || die "$QEMU not found"
[[ -w /dev/kvm ]] || die "/dev/kvm is not usable here"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ember-bench-memory.XXXXXX")
PID=
cleanup() {
    if [[ -n $PID ]]; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ $KIND == tiny ]]; then
    GUEST=${3:-}
    [[ -f $GUEST ]] || die "no guest ELF given or found: '$GUEST'"
    MEM_MIB=128
    ember_cmd=("$EMBER" run --kernel "$GUEST" --memory "${MEM_MIB}M" --serial stdio)
    qemu_cmd=("$QEMU" -M microvm -enable-kvm -cpu "host,-arch-capabilities" -m "$MEM_MIB"
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot -device i8042
        -kernel "$GUEST")
    # QEMU 7.2 cannot use -cpu host on PVM (it sets MSR_IA32_ARCH_CAPABILITIES, which PVM
    # refuses); inside the box plain -cpu host works, but both are the same CPU model here.
else
    KERNEL=$ROOT/build/guest/vmlinuz
    INITRD=$ROOT/build/guest/initramfs.cpio.gz
    for f in "$KERNEL" "$INITRD"; do [[ -f $f ]] || die "$f is missing (run resources/guest/build.sh)"; done
    MEM_MIB=256
    B64=$(printf 'echo EMBER-IDLE; sleep 3600\n' | base64 -w0)
    TAIL="panic=1 pci=off quiet ember.script=$B64"
    ember_cmd=("$EMBER" run --kernel "$KERNEL" --initrd "$INITRD" --cpus 1 --memory "${MEM_MIB}M"
        --serial stdio --cmdline "console=ttyS0 reboot=k $TAIL")
    # As in blk-inner.sh: microvm reboots by triple fault; ACPI on, as Ember's guest has it.
    qemu_cmd=("$QEMU" -M "microvm,acpi=on" -enable-kvm -cpu host -smp 1 -m "$MEM_MIB"
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot
        -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 reboot=t $TAIL")
fi
GUEST_KB=$((MEM_MIB * 1024))

# measure VMM RUN: start it, wait until the guest is idle, read smaps, stop it.
measure() {
    local vmm=$1 run=$2 console=$WORK/console deadline
    local -a cmd
    if [[ $vmm == ember ]]; then cmd=("${ember_cmd[@]}"); else cmd=("${qemu_cmd[@]}"); fi
    "${cmd[@]}" </dev/null >"$console" 2>"$WORK/stderr" &
    PID=$!
    if [[ $KIND == tiny ]]; then
        sleep 1
    else
        deadline=$((SECONDS + ${EMBER_BENCH_GUEST_TIMEOUT:-600}))
        until grep -q EMBER-IDLE "$console" 2>/dev/null; do
            kill -0 "$PID" 2>/dev/null || { cat "$WORK/stderr" >&2; tail -n 20 "$console" >&2; die "$vmm exited before the guest was idle"; }
            ((SECONDS < deadline)) || die "$vmm: no EMBER-IDLE within ${EMBER_BENCH_GUEST_TIMEOUT:-600} s"
            sleep 1
        done
        sleep 5
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/stderr" >&2; die "$vmm exited early"; }
    local threads
    threads=$(find "/proc/$PID/task" -mindepth 1 -maxdepth 1 | wc -l)
    awk -v guest_kb="$GUEST_KB" -v vmm="$vmm" -v run="$run" -v kind="$KIND" -v threads="$threads" '
        function flush() {
            if (!have) return
            if (anon_map && size >= guest_kb) g += rss
            else { r += rss; p += pss; pr += priv; a += anonymous }
            t += rss
        }
        /^[0-9a-f]+-[0-9a-f]+ / {
            flush(); have = 1; size = rss = pss = priv = anonymous = 0
            anon_map = (NF < 6)          # no path: anonymous
            next
        }
        $1 == "Size:" { size = $2 }
        $1 == "Rss:" { rss = $2 }
        $1 == "Pss:" { pss = $2 }
        $1 == "Private_Clean:" || $1 == "Private_Dirty:" { priv += $2 }
        $1 == "Anonymous:" { anonymous = $2 }
        END {
            flush()
            printf "MEM kind=%s vmm=%s run=%d rss=%d pss=%d private=%d anon=%d guest_rss=%d total_rss=%d threads=%d\n",
                kind, vmm, run, r, p, pr, a, g, t, threads
        }' "/proc/$PID/smaps"
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then order="ember qemu"; else order="qemu ember"; fi
    for vmm in $order; do
        measure "$vmm" "$i"
        log "$KIND run $i/$RUNS $vmm done"
    done
done

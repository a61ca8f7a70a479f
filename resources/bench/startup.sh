#!/usr/bin/env bash
# startup.sh: VMM startup and whole-run time of a tiny guest, Ember side by side
# with QEMU's microvm machine (Debian's qemu-system-x86). See
# docs/performance.md, "VMM startup".
#
#   resources/bench/startup.sh [RUNS]
#
# RUNS (default 20): runs of each VMM; Ember and QEMU alternate, the order
#   swapping from run to run, and the tables show medians.
#
# The guest is resources/test-guests' hello-pvh.elf (PVH entry, prints one line
# on COM1, resets through the i8042), 1 vCPU, 128 MiB, run directly on this
# host's /dev/kvm (a tiny guest runs even on a software KVM such as PVM).
#   Ember: ember run --kernel hello-pvh.elf --memory 128M --serial stdio
#   QEMU:  qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities
#          -m 128 -nodefaults -no-user-config -nographic -serial stdio
#          -no-reboot -device i8042 -kernel hello-pvh.elf -append ...
# (microvm has no i8042 of its own; -device i8042 adds one and -no-reboot turns
# the guest's reset into a QEMU exit, as Ember does.)
#
# Each run goes through build/bench/startup/startup-timer (startup-timer.c),
# which forks and execs the VMM with stdin from /dev/null and stdout on a pipe
# and measures with CLOCK_MONOTONIC: "banner" = fork to the guest's first
# output line on stdout, "whole run" = fork to the VMM's exit (wait4), which
# includes the kernel tearing down the VM.
#
# Per iteration there is a third run, Ember with --log-level debug, whose
# startup milestones (`startup: t=<CLOCK_MONOTONIC ns> <step>`, logged by
# src/builder.rs, src/vm.rs and crates/vcpu) give "fork to first KVM_RUN" and
# the split of that time between the steps, and a fourth, a static C program
# that does nothing (built here), for the process floor: what fork, exec and exit
# cost on this host before any VMM work. Then STRACE_RUNS (default 5) runs of
# each VMM under `strace -f --seccomp-bpf -e trace=execve,ioctl` measure execve
# to the first KVM_RUN for both (strace slows both down; compare the ratio),
# and one `strace -f -T -tt` run of Ember lists the system calls on its startup
# path by time.
#
# Builds Ember (cargo build --release), the tiny guests and the timer; installs
# strace and qemu-system-x86 if missing. About a minute with the defaults.
# Environment: EMBER_BENCH_RAW=FILE keeps the raw per-run lines; STRACE_RUNS;
# EMBER_BENCH_EMBER=PATH measures that ember binary instead of
# target/release/ember; EMBER_BENCH_BASELINE=PATH also measures that (older)
# ember binary in the same runs, alternating with the others, for before/after
# figures.
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh
EMBER_LOG_TAG=bench/startup.sh
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { bench_usage 6,6; }
(($# <= 1)) || usage
RUNS=${1:-20}
[[ $RUNS =~ ^[1-9][0-9]{0,3}$ ]] || { ember_log "RUNS must be a positive integer, got '$RUNS'"; usage; }
STRACE_RUNS=${STRACE_RUNS:-5}
[[ $STRACE_RUNS =~ ^[0-9]{1,3}$ ]] || ember_die "STRACE_RUNS must be a number"

ember_need gcc=gcc ld=binutils strace=strace qemu-system-x86_64=qemu-system-x86 awk=gawk

OUT=build/bench/startup
mkdir -p "$OUT"
ember_log "building ember (release), the tiny guests and the timer"
cargo build --release --quiet
resources/test-guests/build.sh "$OUT/guests"
gcc -O2 -Wall -o "$OUT/startup-timer" "$HERE/startup-timer.c"
# The process floor: fork, exec and exit of a static program that does nothing.
echo 'int main(void) { return 0; }' | gcc -O2 -static -x c -o "$OUT/noop" -
EMBER=${EMBER_BENCH_EMBER:-$ROOT/target/release/ember}
GUEST=$ROOT/$OUT/guests/hello-pvh.elf
TIMER=$ROOT/$OUT/startup-timer
CMDLINE="console=ttyS0 reboot=k panic=1 pci=off"
PATTERN="EMBER-TINY"
[[ -c /dev/kvm ]] || ember_die "/dev/kvm is missing"

ember_cmd=("$EMBER" run --kernel "$GUEST" --memory 128M --serial stdio)
BASELINE=${EMBER_BENCH_BASELINE:-}
[[ -z $BASELINE || -x $BASELINE ]] || ember_die "EMBER_BENCH_BASELINE=$BASELINE is not an executable"
base_cmd=("$BASELINE" run --kernel "$GUEST" --memory 128M --serial stdio)
qemu_cmd=(qemu-system-x86_64 -M microvm -enable-kvm -cpu "host,-arch-capabilities" -m 128
    -nodefaults -no-user-config -nographic -serial stdio -no-reboot -device i8042
    -kernel "$GUEST" -append "$CMDLINE")

WORK=$(mktemp -d /tmp/ember-bench-startup.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
RAW=$WORK/raw
: >"$RAW"

# timed VMM LABEL [--log-level debug]: one timed run, appends a raw line.
timed() {
    local vmm=$1 label=$2 line
    shift 2
    local cmd
    local pattern=(-p "$PATTERN")
    case $vmm in
        ember) cmd=("${ember_cmd[@]}" "$@") ;;
        base) cmd=("${base_cmd[@]}") ;;
        noop) cmd=("$ROOT/$OUT/noop") pattern=() ;;
        *) cmd=("${qemu_cmd[@]}") ;;
    esac
    line=$("$TIMER" -o "$WORK/out" -e "$WORK/err" "${pattern[@]}" -- "${cmd[@]}")
    if [[ $line != *" status=0 "* || ($vmm != noop && $line == *" pattern=-1 "*) ]]; then
        ember_log "$label run failed: $line"
        sed 's/^/  stderr: /' "$WORK/err" >&2
        ember_die "$label did not print the banner and exit 0"
    fi
    echo "$label $line" >>"$RAW"
    if [[ $label == ember-debug ]]; then
        # Milestones relative to the timer's t0 (fork), in ns.
        local t0=${line#t0=}
        t0=${t0%% *}
        awk -v t0="$t0" '/ startup: t=[0-9]+ / {
            for (i = 1; i <= NF; i++) if ($i ~ /^t=[0-9]+$/) { t = substr($i, 3); s = i; break }
            name = ""; for (j = s + 1; j <= NF; j++) name = name (name == "" ? "" : " ") $j
            printf "milestone %d %s\n", t - t0, name }' "$WORK/err" >>"$RAW"
    fi
}

ember_log "$RUNS runs of each VMM (alternating), plus $RUNS Ember runs with startup milestones"
"${ember_cmd[@]}" </dev/null >/dev/null 2>&1 || true # warm the page cache
"${qemu_cmd[@]}" </dev/null >/dev/null 2>&1 || true
for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then
        timed ember ember
        timed qemu qemu
    else
        timed qemu qemu
        timed ember ember
    fi
    if [[ -n $BASELINE ]]; then timed base baseline; fi
    timed ember ember-debug --log-level debug
    timed noop noop
done

# strace: execve -> first KVM_RUN, both VMMs, with the same (filtered) tracing.
first_kvm_run() { # VMM: prints ns from execve to the first KVM_RUN of the traced VMM
    local cmd
    if [[ $1 == ember ]]; then cmd=("${ember_cmd[@]}"); else cmd=("${qemu_cmd[@]}"); fi
    strace -f --seccomp-bpf -e trace=execve,ioctl -ttt -o "$WORK/st" "${cmd[@]}" </dev/null >/dev/null 2>&1 || true
    awk '/execve\(/ && !e { e = $2 } /KVM_RUN/ { print int(($2 - e) * 1e9); exit }' "$WORK/st"
}
for ((i = 1; i <= STRACE_RUNS; i++)); do
    if ((i % 2)); then order="ember qemu"; else order="qemu ember"; fi
    for vmm in $order; do
        ns=$(first_kvm_run "$vmm")
        [[ -n $ns ]] && echo "strace-first-run $vmm $ns" >>"$RAW"
    done
done

# --- report --------------------------------------------------------------------------
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { # LABEL FIELD: the values of FIELD (ns) over LABEL's runs
    awk -v l="$1" -v f="$2" '$1 == l { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }' "$RAW"
}
ms() { awk -v v="$1" 'BEGIN { if (v == "nan") print "n/a"; else printf "%.2f", v / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == 0) print "n/a"; else printf "%.2f", b / a }'; }
minmax() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo / 1e6, hi / 1e6 }'; }

e_banner=$(field ember pattern | median)
q_banner=$(field qemu pattern | median)
e_wall=$(field ember wall | median)
q_wall=$(field qemu wall | median)
e_first=$(awk '$1 == "milestone" && $3 == "vCPU" && $5 == "first" { print $2 }' "$RAW" | median)
e_strace=$(awk '$1 == "strace-first-run" && $2 == "ember" { print $3 }' "$RAW" | median)
q_strace=$(awk '$1 == "strace-first-run" && $2 == "qemu" { print $3 }' "$RAW" | median)

echo
echo "VMM startup, tiny guest (hello-pvh, 1 vCPU, 128 MiB), $RUNS runs each, medians in ms"
echo "(QEMU/Ember: how many times longer QEMU takes; > 1 means Ember is faster)"
echo
printf '| %-44s | %9s | %9s | %10s |\n' figure Ember QEMU QEMU/Ember
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "-----------:" "-----------:" "-----------:"
row() { printf '| %-44s | %9s | %9s | %10s |\n' "$1" "$(ms "$2")" "$(ms "$3")" "$(ratio "$2" "$3")"; }
row "fork to first KVM_RUN (Ember milestones)" "$e_first" nan
row "fork to guest banner on stdout" "$e_banner" "$q_banner"
row "whole run (fork to exit, VM torn down)" "$e_wall" "$q_wall"
row "execve to first KVM_RUN under strace" "$e_strace" "$q_strace"
echo
echo "process floor: fork to exit of a static program that does nothing, median $(ms "$(field noop wall | median)") ms"
if [[ -n $BASELINE ]]; then
    echo
    echo "baseline $BASELINE, same runs (medians, ms):" \
        "banner $(ms "$(field baseline pattern | median)"), whole run $(ms "$(field baseline wall | median)")"
fi
echo
echo "spread (min-max, ms): Ember banner $(field ember pattern | minmax), whole $(field ember wall | minmax);" \
    "QEMU banner $(field qemu pattern | minmax), whole $(field qemu wall | minmax)"

echo
echo "Ember startup milestones (--log-level debug runs; median ms since fork, and the step before it)"
echo
printf '| %-56s | %8s | %8s |\n' milestone "at (ms)" "step (ms)"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..58})" "---------:" "---------:"
awk '$1 == "milestone" { n = $0; sub(/^milestone [0-9-]+ /, "", n); if (!(n in seen)) { seen[n] = 1; order[++k] = n } }
    END { for (i = 1; i <= k; i++) print order[i] }' "$RAW" >"$WORK/names"
# In order of their medians (the vCPU thread's first KVM_RUN may come before the main
# thread's later milestones).
while IFS= read -r name; do
    at=$(awk -v n="$name" '$1 == "milestone" { m = $0; sub(/^milestone [0-9-]+ /, "", m); if (m == n) print $2 }' "$RAW" | median)
    printf '%s\t%s\n' "$at" "$name"
done <"$WORK/names" | sort -g >"$WORK/medians"
prev=0
while IFS=$'\t' read -r at name; do
    printf '| %-56s | %8s | %8s |\n' "$name" "$(ms "$at")" "$(awk -v a="$at" -v p="$prev" 'BEGIN { printf "%.3f", (a - p) / 1e6 }')"
    prev=$at
done <"$WORK/medians"

# One traced run of Ember: system calls on the startup path (execve to first KVM_RUN),
# by total time, and what the process exit costs.
strace -f -T -tt -o "$WORK/st-full" "${ember_cmd[@]}" </dev/null >/dev/null 2>&1 || true
echo
echo "One Ember run under strace -f -T -tt: system calls from execve to the first KVM_RUN, by total time"
echo "(strace inflates every call; the shares matter, not the absolute times)"
echo
awk '
    function secs(ts,  a) { split(ts, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
    /execve\(/ && !start { start = secs($2) }
    /KVM_RUN/ && !first { first = secs($2); exit }
    function callname(line,  name) {
        name = $3; sub(/\(.*/, "", name)
        if (name == "ioctl" && match(line, /KVM_[A-Z0-9_]+/)) name = substr(line, RSTART, RLENGTH)
        else if (name == "ioctl" && match(line, /ioctl\([0-9]+, [A-Z0-9_]+/)) {
            name = substr(line, RSTART, RLENGTH); sub(/.*, /, "ioctl:", name)
        }
        return name
    }
    /<unfinished \.\.\.>$/ { pending[$1] = callname($0); next }
    / = / && match($0, /<[0-9.]+>$/) {
        t = substr($0, RSTART + 1, RLENGTH - 2)
        name = ($3 == "<...") ? pending[$1] : callname($0)
        tot[name] += t; cnt[name]++; all += t; calls++
    }
    END {
        printf "execve to first KVM_RUN: %.2f ms wall, %d system calls taking %.2f ms\n\n", (first - start) * 1e3, calls, all * 1e3
        for (n in tot) printf "%s %d %.3f\n", n, cnt[n], tot[n] * 1e3
    }' "$WORK/st-full" >"$WORK/st-summary"
head -2 "$WORK/st-summary"
printf '| %-28s | %6s | %9s |\n' "system call" calls "time (ms)"
printf '|%s|%s|%s|\n' "------------------------------" "-------:" "----------:"
tail -n +3 "$WORK/st-summary" | sort -k3 -nr | head -12 | awk '{ printf "| %-28s | %6d | %9.3f |\n", $1, $2, $3 }'
awk '
    function secs(ts,  a) { split(ts, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
    NR == 1 { pid = $1 }
    $1 == pid && /exit_group\(/ { eg = secs($2) }
    $1 == pid && /\+\+\+ exited/ { ex = secs($2) }
    END { if (eg && ex) printf "\nexit_group to process gone (kernel tears down the VM): %.2f ms\n", (ex - eg) * 1e3 }' "$WORK/st-full"

if [[ -n ${EMBER_BENCH_RAW:-} ]]; then cp "$RAW" "$EMBER_BENCH_RAW"; fi

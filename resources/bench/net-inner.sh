#!/usr/bin/env bash
# net-inner.sh: the measuring half of resources/bench/net.sh. Runs where
# /dev/kvm can run Linux guests (inside the nested-KVM box, or directly on a
# host with hardware KVM) and where it may create tap devices (root);
# net.sh builds everything first and calls it once.
#
#   net-inner.sh RUNS SIZE_MIB
#
# Creates one tap device, embernet<pid>, with the host address SUBNET.1/24
# (SUBNET: EMBER_BENCH_SUBNET, default 172.31.0), deleted again on exit. Then
# for each run it boots every VMM of EMBER_BENCH_VMMS one after the other, on
# that tap, the order rotating from run to run (run 1: ember ember-nooff qemu,
# run 2: ember-nooff qemu ember, ...). The VMMs:
#   ember        target/release/ember, --net tap=...,mac=... (offloads on)
#   ember-nooff  the same with offload=off (no checksum/TSO offload)
#   qemu         qemu-system-x86_64 -M microvm, -netdev tap,vhost=off and
#                virtio-net-device (virtio-mmio, virtio 1.0); QEMU's tap
#                backend negotiates the same offloads as Ember's default
#   qemu-nooff   qemu with the same offloads off as Ember's offload=off
#                (csum, guest_csum, TSO/ECN both ways; not in the default list)
#   qemu-vhost   qemu with vhost=on (in-kernel data path; needs vhost_net; not
#                in the default list)
# Each guest (Debian cloud kernel + the test initramfs, EMBER_BENCH_CPUS vCPUs
# (default 1), 256 MiB, NIC MAC 02:00:00:31:00:02) finds its NIC by MAC, sets
# SUBNET.2/24 on it, pings the host (3 warm-up pings, then 20 at 0.2 s
# intervals), then moves SIZE_MIB MiB over one TCP connection in each
# direction with ember-stream (resources/guest/stream.c):
#   tx  guest -> host: guest `ember-stream -v -s BYTES -d connect`, host
#       `ember-stream -v -d -n 1 listen` (build/guest/ember-stream)
#   rx  host -> guest: host `ember-stream -v -s BYTES -n 1 listen`, guest
#       `ember-stream -v -d connect </dev/null`
# The figures are the guest's (its clock, from connect to the end of the
# copy; for tx that is when the last byte went into the guest's socket, so
# the socket buffer's few MiB are not waited for). The host's own figures are
# kept alongside. Prints on stdout one line per measurement:
#
#   RESULT vmm=<v> run=<n> dir=<tx|rx> bytes=<n> secs=<s> host_bytes=<n> host_secs=<s>
#   RESULT vmm=<v> run=<n> dir=ping min_ms=<x> avg_ms=<x> max_ms=<x>
#
# and one "GUEST vmm=<v> run=<n> status=<rc> wall=<secs> results=<k>
# attempts=<a>" line per guest. A guest that does not produce both
# throughput results (with the whole SIZE_MIB moved) is booted again, up to
# EMBER_BENCH_RETRIES times (default 1); each failed attempt prints a
# "FAILED vmm=<v> run=<n> attempt=<a> status=<rc> wall=<s> results=<k>" line
# and, on stderr, the tail of its console and of the host side's logs. The
# ping result is optional (not counted). Progress goes to stderr. Exits 1 if
# any guest still lacks a throughput result.
#
# Settings (environment): EMBER_BENCH_EMBER (the ember binary, default
# target/release/ember; net.sh passes a private copy), EMBER_BENCH_VMMS
# (default "ember ember-nooff qemu"; spaces or commas), EMBER_BENCH_CPUS (1),
# EMBER_BENCH_GUEST_TIMEOUT (seconds per guest, 600), EMBER_BENCH_RETRIES (1),
# EMBER_BENCH_QEMU (qemu-system-x86_64), EMBER_BENCH_SUBNET (172.31.0),
# EMBER_BENCH_PORT (first of the two TCP ports, 5201), EMBER_BENCH_SCRATCH
# (work directory, /dev/shm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf 'net-inner: %s\n' "$*" >&2; }
die() { printf 'net-inner: error: %s\n' "$*" >&2; exit 1; }

(($# == 2)) || die "usage: net-inner.sh RUNS SIZE_MIB"
RUNS=$1 SIZE_MIB=$2
for n in "$RUNS" "$SIZE_MIB"; do
    [[ $n =~ ^[1-9][0-9]{0,5}$ ]] || die "RUNS and SIZE_MIB must be positive integers, got '$n'"
done
BYTES=$((SIZE_MIB * 1048576))

EMBER=${EMBER_BENCH_EMBER:-$ROOT/target/release/ember}
KERNEL=$ROOT/build/guest/vmlinuz
INITRD=$ROOT/build/guest/initramfs.cpio.gz
STREAM=$ROOT/build/guest/ember-stream
QEMU=${EMBER_BENCH_QEMU:-qemu-system-x86_64}
GUEST_TIMEOUT=${EMBER_BENCH_GUEST_TIMEOUT:-600}
RETRIES=${EMBER_BENCH_RETRIES:-1}
CPUS=${EMBER_BENCH_CPUS:-1}
SUBNET=${EMBER_BENCH_SUBNET:-172.31.0}
PORT=${EMBER_BENCH_PORT:-5201}
IFS=', ' read -r -a VMMS <<<"${EMBER_BENCH_VMMS:-ember ember-nooff qemu}"
[[ $RETRIES =~ ^[0-9]$ ]] || die "EMBER_BENCH_RETRIES must be 0 to 9, got '$RETRIES'"
[[ $CPUS =~ ^[1-9]$ ]] || die "EMBER_BENCH_CPUS must be 1 to 9, got '$CPUS'"
[[ $GUEST_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "EMBER_BENCH_GUEST_TIMEOUT must be a positive integer"
[[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "EMBER_BENCH_SUBNET must look like 172.31.0, got '$SUBNET'"
if ! [[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT >= 65535)); then
    die "EMBER_BENCH_PORT must be 1 to 65534, got '$PORT'"
fi
((${#VMMS[@]})) || die "EMBER_BENCH_VMMS is empty"
for v in "${VMMS[@]}"; do
    case $v in
        ember | ember-nooff | qemu | qemu-nooff | qemu-vhost) ;;
        *) die "unknown VMM '$v' in EMBER_BENCH_VMMS (ember, ember-nooff, qemu, qemu-nooff, qemu-vhost)" ;;
    esac
done
HOST_IP=$SUBNET.1 GUEST_IP=$SUBNET.2 MAC=02:00:00:31:00:02
TX_PORT=$PORT RX_PORT=$((PORT + 1))
# Each ember-stream gives up after this long (the guest's, and the host's).
STREAM_TIMEOUT=$((GUEST_TIMEOUT > 60 ? GUEST_TIMEOUT - 30 : GUEST_TIMEOUT))

for f in "$KERNEL" "$INITRD" "$STREAM"; do [[ -f $f ]] || die "$f is missing (run resources/bench/net.sh)"; done
[[ " ${VMMS[*]} " == *" ember"* ]] && { [[ -x $EMBER ]] || die "$EMBER is missing (run resources/bench/net.sh)"; }
[[ " ${VMMS[*]} " == *" qemu"* ]] && { command -v "$QEMU" >/dev/null || die "$QEMU not found"; }
[[ -w /dev/kvm ]] || die "/dev/kvm is not usable here"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (modprobe tun)"
command -v ip >/dev/null || die "ip (iproute2) not found"
if [[ " ${VMMS[*]} " == *" qemu-vhost "* && ! -c /dev/vhost-net ]]; then
    # In the box, the box kernel's modules are on the shared file system.
    modprobe vhost_net 2>/dev/null || modprobe -d "$ROOT/build/box/kernel-pkg" vhost_net 2>/dev/null || true
    [[ -c /dev/vhost-net ]] || die "qemu-vhost needs /dev/vhost-net (modprobe vhost_net)"
fi
# The subnet must be ours alone: no route (but the default one) may cover it
# or lie inside it, or the new /24 would hijack or lose someone's traffic.
in_use=$({ ip -4 route show to match "$SUBNET.0/24" && ip -4 route show root "$SUBNET.0/24"; } 2>/dev/null |
    grep -v '^default' || true)
[[ -z $in_use ]] || die "$SUBNET.0/24 is already in use here ($(head -n1 <<<"$in_use")); set EMBER_BENCH_SUBNET"

WORK=$(mktemp -d "${EMBER_BENCH_SCRATCH:-/dev/shm}/ember-netbench.XXXXXX")
TAP=embernet$$ # (at most 15 characters)
TAP_MADE=
PIDS=() VMM_PID=
cleanup() {
    local p
    [[ -n $VMM_PID ]] && kill "$VMM_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -n $TAP_MADE ]] && ip link del "$TAP" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the tap -----------------------------------------------------------------------
# A persistent tap, owned by nobody: each VMM attaches to it (TUNSETIFF) for
# its boot and sets its own vnet header and offload flags.
ip tuntap add dev "$TAP" mode tap || die "cannot create the tap $TAP"
TAP_MADE=1
ip addr add "$HOST_IP/24" dev "$TAP"
ip link set "$TAP" up
log "tap $TAP: host $HOST_IP, guest $GUEST_IP ($MAC); ${SIZE_MIB} MiB per direction; ${CPUS} vCPU(s); VMMs: ${VMMS[*]}"

# --- the guest script ---------------------------------------------------------------
# /init has loaded virtio_mmio and virtio_net; the NIC may still be probing.
# Kept short: the whole kernel command line is limited to 2048 bytes.
script="H=$HOST_IP;d=;i=0
while [ -z \"\$d\" ];do for n in /sys/class/net/*;do [ \"\$(cat \$n/address)\" = $MAC ]&&d=\${n##*/};done
[ -n \"\$d\" ]&&break;i=\$((i+1));[ \$i -gt 100 ]&&{ echo NETBENCH-ERROR no NIC $MAC;exit 1;};sleep 0.2;done
ip addr add $GUEST_IP/24 dev \$d&&ip link set \$d up||{ echo NETBENCH-ERROR ip;exit 1;}
ping -c 3 -W 5 -q \$H >/dev/null||echo NETBENCH-ERROR no ping reply
ping -c 20 -i 0.2 -q \$H >/tmp/p&&sed -n 's#.*= \\([0-9.]*\\)/\\([0-9.]*\\)/\\([0-9.]*\\) ms#NETBENCH dir=ping min_ms=\\1 avg_ms=\\2 max_ms=\\3#p' /tmp/p
r(){ x=\$1;shift;if ember-stream -v -t $STREAM_TIMEOUT \"\$@\" 2>/tmp/s;then echo \"NETBENCH dir=\$x \$(tail -n1 /tmp/s)\";else echo \"NETBENCH-ERROR dir=\$x status=\$? \$(tail -n1 /tmp/s)\";fi;}
r tx -s $BYTES -d connect tcp:\$H:$TX_PORT
r rx -d connect tcp:\$H:$RX_PORT </dev/null"
B64=$(printf '%s\n' "$script" | base64 -w0)
CMDLINE_TAIL="panic=1 pci=off quiet ember.script=$B64"
((${#CMDLINE_TAIL} + 40 < 2048)) || die "the guest script is too long for the kernel command line (${#CMDLINE_TAIL} bytes)"

# --- the VMMs -----------------------------------------------------------------------
run_ember() { # CONSOLE_LOG [,NET_OPTIONS]
    exec timeout -k 10 "$GUEST_TIMEOUT" "$EMBER" run --kernel "$KERNEL" --initrd "$INITRD" \
        --cmdline "console=ttyS0 reboot=k $CMDLINE_TAIL" \
        --cpus "$CPUS" --memory 256M --net "tap=$TAP,mac=$MAC${2:-}" --serial stdio \
        </dev/null >"$1" 2>&1
}
run_ember-nooff() { run_ember "$1" ,offload=off; }

# As in blk-inner.sh: microvm has no i8042, so the guest reboots by triple
# fault (reboot=t), which -no-reboot turns into QEMU exiting; the guest finds
# the virtio-mmio devices through ACPI; force-legacy=false gives virtio 1.0,
# like Ember. vhost=off keeps QEMU's virtio-net in user space, like Ember's.
run_qemu() { # CONSOLE_LOG [VHOST [,DEVICE_OPTIONS]]
    exec timeout -k 10 "$GUEST_TIMEOUT" "$QEMU" -M microvm,acpi=on -global virtio-mmio.force-legacy=false \
        -enable-kvm -cpu host \
        -smp "$CPUS" -m 256 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 reboot=t $CMDLINE_TAIL" \
        -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=${2:-off}" \
        -device "virtio-net-device,netdev=n0,mac=$MAC${3:-}" \
        </dev/null >"$1" 2>&1
}
run_qemu-nooff() {
    run_qemu "$1" off ,csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off
}
run_qemu-vhost() { run_qemu "$1" on; }

# The host's two listeners for one guest; their PIDs go to PIDS.
start_listeners() { # LOG_PREFIX
    local i
    "$STREAM" -v -d -n 1 -t "$STREAM_TIMEOUT" listen "tcp:$HOST_IP:$TX_PORT" \
        </dev/null >/dev/null 2>"$1.host-tx" &
    PIDS+=($!)
    "$STREAM" -v -s "$BYTES" -n 1 -t "$STREAM_TIMEOUT" listen "tcp:$HOST_IP:$RX_PORT" \
        </dev/null >/dev/null 2>"$1.host-rx" &
    PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        grep -q listening "$1.host-tx" 2>/dev/null && grep -q listening "$1.host-rx" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$1.host-tx" "$1.host-rx" >&2
    die "the host's ember-stream listeners did not start"
}
# Waits up to 10 s for the listeners (they end once the guest is done), then
# kills what is left (a guest that died before connecting).
stop_listeners() {
    local p i alive
    for ((i = 0; i < 100; i++)); do
        alive=
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ -n $alive ]] || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# field NAME LINE: the value of NAME=... in LINE.
field() {
    local f
    for f in $2; do [[ $f == "$1="* ]] && { printf '%s' "${f#*=}"; return; }; done
}

# guest VMM RUN: boot one guest (retrying a failed boot up to RETRIES times) and
# print its RESULT lines and one GUEST line.
failures=0
guest() { # VMM RUN
    local vmm=$1 run=$2 attempt rc t0 t1 wall n out tx rx ping h
    local base console
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        base=$WORK/$vmm-$run-$attempt console=$base.log out=
        start_listeners "$base"
        rc=0
        t0=$(date +%s.%N)
        # In the background, so that a signal reaches the traps at once.
        "run_$vmm" "$console" &
        VMM_PID=$!
        wait "$VMM_PID" || rc=$?
        VMM_PID=
        t1=$(date +%s.%N)
        stop_listeners
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        # (No process substitution: the box's chroot has no /dev/fd.)
        tx=$(tr -d '\r' <"$console" | grep -E '^NETBENCH dir=tx ' | tail -n1 || true)
        rx=$(tr -d '\r' <"$console" | grep -E '^NETBENCH dir=rx ' | tail -n1 || true)
        ping=$(tr -d '\r' <"$console" | grep -E '^NETBENCH dir=ping ' | tail -n1 || true)
        n=0
        # A result counts only when the whole transfer arrived.
        if [[ -n $tx && $(field bytes_out "$tx") == "$BYTES" ]]; then
            n=$((n + 1))
            h=$(grep -E '^bytes_out=' "$base.host-tx" | tail -n1 || true)
            out+=$(printf 'RESULT vmm=%s run=%s dir=tx bytes=%s secs=%s host_bytes=%s host_secs=%s' \
                "$vmm" "$run" "$BYTES" "$(field secs "$tx")" "$(field bytes_in "$h")" "$(field secs "$h")")$'\n'
        fi
        if [[ -n $rx && $(field bytes_in "$rx") == "$BYTES" ]]; then
            n=$((n + 1))
            h=$(grep -E '^bytes_out=' "$base.host-rx" | tail -n1 || true)
            out+=$(printf 'RESULT vmm=%s run=%s dir=rx bytes=%s secs=%s host_bytes=%s host_secs=%s' \
                "$vmm" "$run" "$BYTES" "$(field secs "$rx")" "$(field bytes_out "$h")" "$(field secs "$h")")$'\n'
        fi
        if [[ -n $ping ]]; then
            out+="RESULT vmm=$vmm run=$run ${ping#NETBENCH }"$'\n'
        fi
        log "run $run/$RUNS $vmm: status $rc, ${wall}s, $n of 2 results (attempt $attempt)${tx:+; tx: ${tx#NETBENCH dir=tx }}${rx:+; rx: ${rx#NETBENCH dir=rx }}"
        ((n == 2)) && break
        printf 'FAILED vmm=%s run=%s attempt=%s status=%s wall=%s results=%s\n' \
            "$vmm" "$run" "$attempt" "$rc" "$wall" "$n"
        log "$vmm run $run attempt $attempt failed (exit status $rc); last lines of its console:"
        tr -d '\r' <"$console" | tail -n 25 | sed 's/^/    | /' >&2
        log "host side (guest -> host listener, host -> guest listener):"
        cat "$base.host-tx" "$base.host-rx" | sed 's/^/    | /' >&2
    done
    printf '%s' "$out"
    printf 'GUEST vmm=%s run=%s status=%s wall=%s results=%s attempts=%s\n' \
        "$vmm" "$run" "$rc" "$wall" "$n" "$((attempt > 1 + RETRIES ? attempt - 1 : attempt))"
    ((n == 2)) || failures=$((failures + 1))
}

nv=${#VMMS[@]}
for ((run = 1; run <= RUNS; run++)); do
    for ((k = 0; k < nv; k++)); do
        guest "${VMMS[(run - 1 + k) % nv]}" "$run"
    done
done

((failures == 0)) || die "$failures guest(s) did not produce both NETBENCH throughput lines"

#!/usr/bin/env bash
# box.sh: run commands inside the "nested-KVM box", a QEMU TCG virtual machine
# whose (emulated AMD SVM) CPU gives a real /dev/kvm that can run Linux guests.
# Commands run chrooted into the host's own filesystem (shared over virtio-9p),
# in the caller's working directory and environment.
#
#   box.sh build                          build build/box/ (and build/guest/)
#   box.sh run  [OPTS] -- CMD [ARG...]    boot a box, run CMD, power it off
#   box.sh start [--owner PID]            boot a persistent box in the background
#   box.sh exec [OPTS] -- CMD [ARG...]    run CMD in the persistent box
#   box.sh stop                           stop the persistent box
#   box.sh status                         exit 0 if the persistent box is up
#   box.sh need                           exit 0 if /dev/kvm here cannot run Linux
# OPTS: --timeout SECS, --env NAME=VALUE (repeatable), --clean-env.
# Exit status: CMD's own; 124 on timeout; 125 when the box itself failed;
# 2 on usage errors. See resources/box/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/box.sh
EMBER_LOG_TAG=box.sh
# shellcheck source=../guest/lib.sh
. "$HERE/../guest/lib.sh"

BOX_BUILD=${EMBER_BOX_BUILD_DIR:-$EMBER_ROOT/build/box}
STATE=${EMBER_BOX_DIR:-$BOX_BUILD/state}
BOX_MEM=${EMBER_BOX_MEM:-8192}
BOX_CPUS=${EMBER_BOX_CPUS:-2}
BOOT_TIMEOUT=${EMBER_BOX_BOOT_TIMEOUT:-600}
DEFAULT_TIMEOUT=${EMBER_BOX_TIMEOUT:-3600}
IDLE_TIMEOUT=${EMBER_BOX_IDLE_TIMEOUT:-3600}
PICKUP_TIMEOUT=${EMBER_BOX_PICKUP_TIMEOUT:-120}
# The box's dispatcher touches state/heartbeat at least every 2s; none for this long while a
# job runs means the box kernel is wedged, whatever the job is doing.
HEARTBEAT_TIMEOUT=${EMBER_BOX_HEARTBEAT_TIMEOUT:-90}
BOX_KERNEL_META=${EMBER_BOX_KERNEL_META:-linux-image-amd64}
# Kernel modules for the box (dependencies are added automatically).
BOX_MODULES="virtio_pci 9pnet_virtio 9p virtio_rng virtio_console kvm_amd tun ${EMBER_BOX_MODULES:-}"

EXIT_TIMEOUT=124
EXIT_BOX=125

box_fail() { printf 'box.sh: error: %s\n' "$*" >&2; exit "$EXIT_BOX"; }
usage_fail() { printf 'box.sh: %s (see the header of %s)\n' "$*" "$SELF" >&2; exit 2; }
now() { date +%s; }

# --- need ----------------------------------------------------------------------
# Exit 0 when the local /dev/kvm cannot run real Linux guests (PVM or no
# hardware virtualization), so the box is needed; 1 when it can run them.
cmd_need() {
    if [[ -d /sys/module/kvm_pvm ]]; then
        return 0
    fi
    if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
        return 0
    fi
    [[ -c /dev/kvm ]] || return 0
    return 1
}

# --- build ---------------------------------------------------------------------
cmd_build() {
    "$HERE/../guest/build.sh"
    mkdir -p "$BOX_BUILD"
    exec 8>"$BOX_BUILD/.build.lock"
    flock 8 || ember_die "cannot lock $BOX_BUILD/.build.lock"
    ember_need qemu-system-x86_64=qemu-system-x86 depmod=kmod busybox=busybox-static \
        cpio=cpio gzip=gzip xz=xz-utils setpriv=util-linux readelf=binutils
    [[ -x /bin/busybox ]] && file -b /bin/busybox | grep -q 'statically linked' ||
        ember_die "/bin/busybox is not a static busybox (install busybox-static)"
    local kpkg=$BOX_BUILD/kernel-pkg kver mdir
    kver=$(ember_fetch_kernel "$BOX_KERNEL_META" "$kpkg")
    mdir=$kpkg/lib/modules/$kver
    if [[ ! -s $mdir/modules.dep ]]; then
        depmod -b "$kpkg" "$kver" || ember_die "depmod failed for $kpkg"
    fi
    if [[ ! -f $BOX_BUILD/vmlinuz ]] || ! cmp -s "$kpkg/boot/vmlinuz-$kver" "$BOX_BUILD/vmlinuz"; then
        cp "$kpkg/boot/vmlinuz-$kver" "$BOX_BUILD/vmlinuz.tmp"
        mv "$BOX_BUILD/vmlinuz.tmp" "$BOX_BUILD/vmlinuz"
        rm -f "$BOX_BUILD/vmlinux" "$BOX_BUILD/kernel"
    fi
    # Booting the uncompressed ELF through its PVH entry skips the (XZ)
    # decompression, which takes seconds under TCG.
    if [[ ! -e $BOX_BUILD/kernel ]]; then
        ember_extract_vmlinux "$BOX_BUILD/vmlinuz" "$BOX_BUILD/vmlinux"
        if [[ -n $(ember_pvh_entry "$BOX_BUILD/vmlinux") ]]; then
            ln -sfn vmlinux "$BOX_BUILD/kernel"
        else
            ember_log "box kernel has no PVH entry note, booting the bzImage"
            rm -f "$BOX_BUILD/vmlinux"
            ln -sfn vmlinuz "$BOX_BUILD/kernel"
        fi
    fi

    # Resolve the modules and their dependencies into a load order.
    local -A path_of=() deps_of=() seen=()
    local order=() line p n
    while IFS= read -r line; do
        p=${line%%:*}
        n=${p##*/}
        n=${n%%.ko*}
        n=${n//-/_}
        path_of[$n]=$p
        deps_of[$n]=${line#*:}
    done <"$mdir/modules.dep"
    visit() {
        local m=$1 d dn
        [[ -n ${seen[$m]:-} ]] && return 0
        seen[$m]=1
        if [[ -z ${path_of[$m]:-} ]]; then
            if sed 's#.*/##; s#\.ko.*##; s#-#_#g' "$mdir/modules.builtin" | grep -qx "$m"; then
                return 0
            fi
            ember_die "kernel module $m is neither a module nor built into $kver"
        fi
        for d in ${deps_of[$m]}; do
            dn=${d##*/}
            dn=${dn%%.ko*}
            visit "${dn//-/_}"
        done
        order+=("$m")
    }
    for n in $BOX_MODULES; do visit "${n//-/_}"; done

    local stamp
    stamp=$(ember_fingerprint "$HERE/init" /bin/busybox "$kver" "${order[*]}" box-initramfs-v1)
    if [[ -f $BOX_BUILD/initramfs.cpio.gz && -f $BOX_BUILD/initramfs.stamp &&
        $(<"$BOX_BUILD/initramfs.stamp") == "$stamp" ]]; then
        return 0
    fi
    ember_log "building box initramfs (kernel $kver; modules: ${order[*]})"
    local stage
    stage=$(mktemp -d "$BOX_BUILD/.initramfs.XXXXXX")
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,lib/modules}
    cp /bin/busybox "$stage/bin/busybox"
    while read -r p; do
        [[ -e $stage/$p ]] || ln -s /bin/busybox "$stage/$p"
    done < <(/bin/busybox --list-full)
    install -m 0755 "$HERE/init" "$stage/init"
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    for n in "${order[@]}"; do
        p=${path_of[$n]}
        case $p in
            *.ko) cp "$mdir/$p" "$stage/lib/modules/$n.ko" ;;
            *.ko.xz) xz -dc "$mdir/$p" >"$stage/lib/modules/$n.ko" ;;
            *.ko.zst) zstd -qdc "$mdir/$p" >"$stage/lib/modules/$n.ko" ;;
            *) ember_die "unsupported module file $p" ;;
        esac
        case $n in
            kvm_amd) echo "$n nested=1 npt=1" ;;
            *) echo "$n" ;;
        esac
    done >"$stage/lib/modules/load-order"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc --owner=0:0 --reproducible --quiet) | gzip -6 -n >"$BOX_BUILD/initramfs.cpio.gz.tmp"
    mv "$BOX_BUILD/initramfs.cpio.gz.tmp" "$BOX_BUILD/initramfs.cpio.gz"
    printf '%s\n' "$stamp" >"$BOX_BUILD/initramfs.stamp"
    rm -rf "$stage"
}

ensure_built() {
    if [[ ${EMBER_BOX_SKIP_BUILD:-0} == 1 && -f $BOX_BUILD/initramfs.cpio.gz && -e $BOX_BUILD/kernel ]]; then
        return 0
    fi
    (cmd_build) || box_fail "building the box failed"
}

# --- QEMU ------------------------------------------------------------------------
# qemu_argv STATEDIR ONESHOT(0|1): fill the QEMU array.
qemu_argv() {
    local st=$1 oneshot=$2 append
    append="console=ttyS0 quiet loglevel=0 panic=1 mitigations=off ember.box.state=$st"
    [[ $oneshot == 1 ]] && append+=" ember.box.oneshot=1"
    [[ -n ${EMBER_BOX_APPEND:-} ]] && append+=" $EMBER_BOX_APPEND"
    [[ ${EMBER_BOX_DEBUG:-0} == 1 ]] && append=${append/ quiet loglevel=0/}
    QEMU=(qemu-system-x86_64 -name ember-box
        -M q35 -accel tcg,thread=multi -cpu EPYC,+svm,+npt
        -smp "$BOX_CPUS" -m "$BOX_MEM"
        -nodefaults -no-user-config -display none -no-reboot
        -serial "file:$st/console.log"
        -kernel "$BOX_BUILD/kernel" -initrd "$BOX_BUILD/initramfs.cpio.gz"
        -append "$append"
        -fsdev local,id=hostroot,path=/,security_model=passthrough,multidevs=remap
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
        -chardev "pipe,id=notify,path=$st/notify"
        -device virtio-serial-pci -device virtserialport,chardev=notify,name=ember.notify
        -device virtio-rng-pci)
    rm -f "$st/notify.in" "$st/notify.out"
    mkfifo "$st/notify.in" "$st/notify.out"
}

# notify STATEDIR: wake the box's dispatcher (see resources/box/init). Opening
# the FIFO read-write never blocks, even when QEMU is gone.
notify() {
    [[ -p $1/notify.in ]] || return 0
    { printf 'x\n' >&3; } 3<>"$1/notify.in" 2>/dev/null || true
}

# Close every inherited file descriptor but 0-2, so that a long-lived process
# holds no lock and no pipe of whoever started it (a CI log pipe, say).
close_fds() {
    local fd n
    for fd in /proc/self/fd/*; do
        n=${fd##*/}
        ((n > 2)) && eval "exec $n>&-" 2>/dev/null
    done
    return 0
}

# True if PID is alive and is the QEMU serving state dir ST.
is_box_qemu() {
    local pid=$1 st=$2
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "ember.box.state=$st "
}

show_qemu_log() { # STATEDIR
    [[ -s $1/qemu.log ]] || return 0
    { grep -v "TCG doesn't support requested feature" "$1/qemu.log" || true; } | sed 's/^/box.sh: qemu: /' >&2
}

show_console() { # STATEDIR [LINES]
    local log=$1/console.log
    [[ -s $log ]] || return 0
    printf 'box.sh: --- last lines of the box console (%s) ---\n' "$log" >&2
    tail -n "${2:-30}" "$log" | tr -d '\r' >&2
    printf 'box.sh: --- end of console ---\n' >&2
}

# --- jobs ------------------------------------------------------------------------
# parse_job_opts ARGS...: sets TIMEOUT, CLEAN_ENV, EXTRA_ENV, CMD.
parse_job_opts() {
    TIMEOUT=$DEFAULT_TIMEOUT CLEAN_ENV=0 EXTRA_ENV=() CMD=()
    while (($#)); do
        case $1 in
            --timeout) (($# >= 2)) || usage_fail "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
            --timeout=*) TIMEOUT=${1#*=}; shift ;;
            --env | -e) (($# >= 2)) || usage_fail "--env needs NAME=VALUE"; EXTRA_ENV+=("$2"); shift 2 ;;
            --env=*) EXTRA_ENV+=("${1#*=}"); shift ;;
            --clean-env) CLEAN_ENV=1; shift ;;
            --) shift; CMD=("$@"); break ;;
            *) usage_fail "unknown option '$1' (put the command after --)" ;;
        esac
    done
    ((${#CMD[@]})) || usage_fail "no command given (usage: ... -- CMD [ARG...])"
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || usage_fail "--timeout wants whole seconds, got '$TIMEOUT'"
    local e
    for e in "${EXTRA_ENV[@]}"; do
        [[ $e == [A-Za-z_]*=* ]] || usage_fail "--env wants NAME=VALUE, got '$e'"
    done
}

# sq WORD: WORD quoted for POSIX sh.
sq() {
    local q="'" r="'\\''"
    printf "'%s'" "${1//"$q"/"$r"}"
}

# new_job STATEDIR: create a job for CMD (cwd: $PWD); sets JOB_ID and JOB_DIR.
# Its run.sh is run by the box's busybox sh; it enters the host root with
# chroot and the working directory with the host's env -C, so no host shell
# has to start (a bash start costs ~0.3s under TCG).
new_job() {
    local st=$1 cwd name
    cwd=$(pwd -P 2>/dev/null) || box_fail "the current directory does not exist"
    mkdir -p "$st/jobs" "$st/queue"
    JOB_DIR=$(mktemp -d "$st/jobs/XXXXXXXXXX")
    JOB_ID=${JOB_DIR##*/}
    local envs=()
    if [[ $CLEAN_ENV == 1 ]]; then
        envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
    else
        while IFS= read -r name; do
            case $name in _ | SHLVL | PWD | OLDPWD) continue ;; esac
            envs+=("$name=${!name}")
        done < <(compgen -e)
    fi
    envs+=("PWD=$cwd" EMBER_IN_BOX=1 "${EXTRA_ENV[@]}")
    local w
    {
        echo '# generated by box.sh, run by the box'"'"'s busybox sh'
        printf 'set --'
        for w in "${envs[@]}" "${CMD[@]}"; do printf ' %s' "$(sq "$w")"; done
        printf '\n'
        printf 'dir=%s\n' "$(sq "$cwd")"
        # (The else branch runs the job when already inside the host root.)
        echo 'if [ -x /host/usr/bin/env ]; then'
        echo '    exec chroot /host /usr/bin/env -i -C "$dir" -- "$@"'
        echo 'else'
        echo '    exec /usr/bin/env -i -C "$dir" -- "$@"'
        echo 'fi'
    } >"$JOB_DIR/run.sh"
    : >"$JOB_DIR/stdout"
    : >"$JOB_DIR/stderr"
}

# box_kernel_stalled STATEDIR OFFSET: true if the box kernel's log past byte
# OFFSET reports an RCU stall or a lockup (visible with EMBER_BOX_DEBUG=1).
box_kernel_stalled() {
    tail -c +"$(($2 + 1))" "$1/console.log" 2>/dev/null |
        grep -E 'rcu: INFO: .*stall|soft lockup|hard LOCKUP' >/dev/null
}

# box_heart_stopped STATEDIR JOB_START: true if the box's dispatcher has not touched its
# heartbeat for HEARTBEAT_TIMEOUT seconds (counting from JOB_START at the earliest).
box_heart_stopped() {
    local beat
    beat=$(stat -c %Y "$1/heartbeat" 2>/dev/null) || return 1
    ((beat < $2)) && beat=$2
    (($(now) - beat >= HEARTBEAT_TIMEOUT))
}

# wait_job STATEDIR QEMU_PID: stream the job's output, wait for its exit status.
# Sets JOB_RC.
wait_job() {
    local st=$1 qpid=$2 start sentinel t1 t2 why='' console_at last_check
    start=$(now)
    last_check=$start
    # Where the box kernel's log stood when the job began: a stall reported after that
    # (below) means the box's own kernel is wedged, not that the job is slow.
    console_at=$(stat -c %s "$st/console.log" 2>/dev/null || echo 0)
    # The tails follow the output until this sentinel exits; it dies with
    # box.sh (pdeathsig) and is killed by the exit traps (stop_sentinel).
    setpriv --pdeathsig KILL -- sleep infinity &
    sentinel=$!
    SENTINEL=$sentinel
    tail -c +1 -s 0.05 -f --pid="$sentinel" "$JOB_DIR/stdout" &
    t1=$!
    tail -c +1 -s 0.05 -f --pid="$sentinel" "$JOB_DIR/stderr" >&2 &
    t2=$!
    : >"$st/queue/$JOB_ID"
    notify "$st"
    while [[ ! -f $JOB_DIR/rc ]]; do
        sleep 0.05
        [[ -f $JOB_DIR/rc ]] && break
        if ! kill -0 "$qpid" 2>/dev/null; then
            why=box-died
            break
        fi
        if (($(now) - last_check >= 5)); then
            last_check=$(now)
            if box_kernel_stalled "$st" "$console_at" || box_heart_stopped "$st" "$start"; then
                why=box-stalled
                : >"$JOB_DIR/cancel"
                notify "$st"
                break
            fi
        fi
        if ((TIMEOUT > 0 && $(now) - start >= TIMEOUT)); then
            why=timeout
            : >"$JOB_DIR/cancel"
            notify "$st"
            local i
            for ((i = 0; i < 50; i++)); do
                [[ -f $JOB_DIR/rc ]] && break
                sleep 0.2
            done
            # A box that cannot even kill the job within 10s is itself wedged: that is the
            # box's failure, not a slow command.
            [[ -f $JOB_DIR/rc ]] || why=box-stalled
            break
        fi
        if [[ -e $st/queue/$JOB_ID ]] && (($(now) - start >= PICKUP_TIMEOUT)); then
            why=no-pickup
            rm -f "$st/queue/$JOB_ID"
            break
        fi
    done
    kill "$sentinel" 2>/dev/null || true
    wait "$t1" "$t2" 2>/dev/null || true
    wait "$sentinel" 2>/dev/null || true
    JOB_RC=
    [[ -f $JOB_DIR/rc ]] && JOB_RC=$(<"$JOB_DIR/rc")
    case $why in
        timeout)
            printf 'box.sh: command timed out after %ss and was killed: %s\n' "$TIMEOUT" "${CMD[*]}" >&2
            JOB_RC=$EXIT_TIMEOUT
            ;;
        box-stalled)
            # The nested-TCG box kernel has lost timer interrupts (RCU stalls, soft
            # lockups, a dispatcher that stopped running) under host load; it does not
            # recover, so stop it: the next command gets a fresh box.
            printf 'box.sh: error: the box kernel stalled while running: %s\n' "${CMD[*]}" >&2
            show_console "$st"
            kill "$qpid" 2>/dev/null || true
            JOB_RC=$EXIT_BOX
            ;;
        box-died)
            printf 'box.sh: error: the box stopped while running: %s\n' "${CMD[*]}" >&2
            [[ -s $st/box-error ]] && printf 'box.sh: box error: %s\n' "$(<"$st/box-error")" >&2
            show_console "$st"
            JOB_RC=$EXIT_BOX
            ;;
        no-pickup)
            printf 'box.sh: error: the box did not pick up the job within %ss\n' "$PICKUP_TIMEOUT" >&2
            show_console "$st"
            JOB_RC=$EXIT_BOX
            ;;
    esac
    [[ $JOB_RC =~ ^[0-9]+$ ]] || JOB_RC=$EXIT_BOX
}

stop_sentinel() {
    if [[ -n ${SENTINEL:-} ]]; then
        kill "$SENTINEL" 2>/dev/null || true
        SENTINEL=
    fi
}

# --- run (one-shot) ----------------------------------------------------------------
cmd_run() {
    parse_job_opts "$@"
    ensure_built
    mkdir -p "$BOX_BUILD/tmp"
    local st qpid t0 booted
    st=$(mktemp -d "$BOX_BUILD/tmp/run.XXXXXXXX")
    [[ $st != *[[:space:]]* ]] || box_fail "box state path must not contain whitespace: $st"
    # shellcheck disable=SC2064
    trap "cleanup_run '$st'" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    new_job "$st"
    qemu_argv "$st" 1
    t0=$(now)
    (
        close_fds
        exec setpriv --pdeathsig KILL -- "${QEMU[@]}"
    ) </dev/null >"$st/qemu.log" 2>&1 &
    qpid=$!
    RUN_QPID=$qpid
    # Wait for the box to boot (separately from the command's own timeout).
    booted=0
    while ((!booted)); do
        [[ -f $st/ready ]] && booted=1 && break
        if ! kill -0 "$qpid" 2>/dev/null; then
            wait "$qpid" 2>/dev/null || true
            printf 'box.sh: error: the box failed to boot\n' >&2
            [[ -s $st/box-error ]] && printf 'box.sh: box error: %s\n' "$(<"$st/box-error")" >&2
            show_qemu_log "$st"
            show_console "$st"
            exit "$EXIT_BOX"
        fi
        if (($(now) - t0 >= BOOT_TIMEOUT)); then
            printf 'box.sh: error: the box did not boot within %ss\n' "$BOOT_TIMEOUT" >&2
            show_console "$st"
            exit "$EXIT_BOX"
        fi
        sleep 0.2
    done
    wait_job "$st" "$qpid"
    exit "$JOB_RC"
}

cleanup_run() {
    local st=$1
    stop_sentinel
    if [[ -n ${RUN_QPID:-} ]] && kill -0 "$RUN_QPID" 2>/dev/null; then
        kill "$RUN_QPID" 2>/dev/null || true
        wait "$RUN_QPID" 2>/dev/null || true
    fi
    if [[ ${EMBER_BOX_KEEP_RUN_DIR:-0} == 1 ]]; then
        printf 'box.sh: kept %s\n' "$st" >&2
    else
        rm -rf "$st"
    fi
}

# --- persistent box ------------------------------------------------------------------
box_running() { # sets BOX_QPID
    BOX_QPID=
    [[ -f $STATE/qemu.pid ]] || return 1
    BOX_QPID=$(<"$STATE/qemu.pid")
    is_box_qemu "$BOX_QPID" "$STATE"
}

cmd_status() {
    if box_running && [[ -f $STATE/ready ]]; then
        local up=$(($(now) - $(stat -c %Y "$STATE/ready")))
        printf 'box running: qemu pid %s, state %s, ready for %ss\n' "$BOX_QPID" "$STATE" "$up"
        [[ -f $STATE/owner ]] && printf 'owner pid: %s\n' "$(<"$STATE/owner")"
        return 0
    fi
    if box_running; then
        printf 'box booting: qemu pid %s, state %s\n' "$BOX_QPID" "$STATE"
        return 1
    fi
    printf 'no box running (state %s)\n' "$STATE"
    return 1
}

clear_runtime() {
    rm -rf "$STATE/queue" "$STATE/jobs"
    rm -f "$STATE"/{ready,keepalive,box-error,qemu.pid,supervisor.pid,owner,last-used,notify.in,notify.out}
}

cmd_start() {
    local owner=${EMBER_BOX_OWNER:-}
    while (($#)); do
        case $1 in
            --owner) (($# >= 2)) || usage_fail "--owner needs a pid"; owner=$2; shift 2 ;;
            --owner=*) owner=${1#*=}; shift ;;
            *) usage_fail "unknown option '$1' for start" ;;
        esac
    done
    [[ -z $owner || $owner =~ ^[0-9]+$ ]] || usage_fail "--owner wants a pid"
    if [[ -n $owner ]] && ! kill -0 "$owner" 2>/dev/null; then
        usage_fail "--owner $owner: no such process"
    fi
    [[ $STATE == /* && $STATE != *[[:space:]]* ]] || box_fail "EMBER_BOX_DIR must be an absolute path without whitespace: $STATE"
    ensure_built
    mkdir -p "$STATE"
    exec 7>"$STATE/.lock"
    flock 7 || box_fail "cannot lock $STATE/.lock"
    if box_running; then
        if [[ -f $STATE/ready ]]; then
            printf 'box.sh: box already running (qemu pid %s)\n' "$BOX_QPID" >&2
            return 0
        fi
    else
        clear_runtime
        [[ -f $STATE/console.log ]] && mv -f "$STATE/console.log" "$STATE/console.prev.log"
        mkdir -p "$STATE/queue" "$STATE/jobs"
        : >"$STATE/keepalive"
        : >"$STATE/last-used"
        [[ -n $owner ]] && printf '%s\n' "$owner" >"$STATE/owner"
        (
            close_fds
            exec setsid "$SELF" __supervise
        ) </dev/null >"$STATE/supervisor.log" 2>&1 &
    fi
    local t0 qpid=
    t0=$(now)
    while [[ ! -f $STATE/ready ]]; do
        sleep 0.2
        if [[ -z $qpid && -f $STATE/qemu.pid ]]; then qpid=$(<"$STATE/qemu.pid"); fi
        if [[ -s $STATE/box-error ]]; then
            printf 'box.sh: error: box failed: %s\n' "$(<"$STATE/box-error")" >&2
            show_console "$STATE"
            stop_box
            exit "$EXIT_BOX"
        fi
        if [[ -n $qpid ]] && ! kill -0 "$qpid" 2>/dev/null; then
            printf 'box.sh: error: the box failed to boot\n' >&2
            show_qemu_log "$STATE"
            show_console "$STATE"
            exit "$EXIT_BOX"
        fi
        if [[ -z $qpid ]] && (($(now) - t0 >= 30)); then
            printf 'box.sh: error: the box supervisor did not start QEMU\n' >&2
            if [[ -s $STATE/supervisor.log ]]; then sed 's/^/box.sh: supervisor: /' "$STATE/supervisor.log" >&2; fi
            stop_box
            exit "$EXIT_BOX"
        fi
        if (($(now) - t0 >= BOOT_TIMEOUT)); then
            printf 'box.sh: error: the box did not boot within %ss\n' "$BOOT_TIMEOUT" >&2
            show_console "$STATE"
            stop_box
            exit "$EXIT_BOX"
        fi
    done
    printf 'box.sh: box ready after %ss (state %s)\n' "$(($(now) - t0))" "$STATE" >&2
}

# Runs detached (setsid) for the lifetime of a persistent box: starts QEMU as
# its child (QEMU gets SIGKILL if the supervisor dies) and stops the box when
# the owner process exits, the keepalive file goes away, or it idles too long.
cmd_supervise() {
    local qpid reason='' owner=''
    [[ -f $STATE/owner ]] && owner=$(<"$STATE/owner")
    echo $$ >"$STATE/supervisor.pid"
    qemu_argv "$STATE" 0
    setpriv --pdeathsig KILL -- "${QEMU[@]}" </dev/null >"$STATE/qemu.log" 2>&1 &
    qpid=$!
    echo "$qpid" >"$STATE/qemu.pid"
    trap 'reason="signal"' TERM INT HUP
    while [[ -z $reason ]]; do
        sleep 2 &
        wait $! || true
        [[ -n $reason ]] && break
        if ! kill -0 "$qpid" 2>/dev/null; then reason="qemu exited"; break; fi
        if [[ -n $owner ]] && ! kill -0 "$owner" 2>/dev/null; then reason="owner $owner exited"; break; fi
        if [[ ! -e $STATE/keepalive ]]; then reason="keepalive removed"; break; fi
        # Finished jobs whose exec was killed outright (nobody removed them).
        find "$STATE/jobs" -mindepth 2 -maxdepth 2 -name rc -mmin +2 -printf '%h\0' 2>/dev/null |
            xargs -0r rm -rf
        if ((IDLE_TIMEOUT > 0)) && [[ -f $STATE/ready ]] &&
            ! compgen -G "$STATE/jobs/*" >/dev/null &&
            (($(now) - $(stat -c %Y "$STATE/last-used" 2>/dev/null || now) >= IDLE_TIMEOUT)); then
            reason="idle for ${IDLE_TIMEOUT}s"
            break
        fi
    done
    echo "supervisor: stopping the box: $reason"
    if kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$qpid" 2>/dev/null || true
    fi
    wait "$qpid" 2>/dev/null || true
    # Leave the state alone if a newer box took it over meanwhile.
    if [[ ! -f $STATE/supervisor.pid || $(<"$STATE/supervisor.pid") == "$$" ]]; then
        clear_runtime
        printf '%s\n' "$reason" >"$STATE/stopped"
    fi
}

stop_box() {
    local spid='' qpid='' i
    [[ -f $STATE/supervisor.pid ]] && spid=$(<"$STATE/supervisor.pid")
    [[ -f $STATE/qemu.pid ]] && qpid=$(<"$STATE/qemu.pid")
    rm -f "$STATE/keepalive"
    if [[ -n $spid ]] && tr '\0' ' ' <"/proc/$spid/cmdline" 2>/dev/null | grep -q '__supervise'; then
        kill "$spid" 2>/dev/null || true
    fi
    if is_box_qemu "$qpid" "$STATE"; then
        kill "$qpid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do is_box_qemu "$qpid" "$STATE" || break; sleep 0.1; done
        is_box_qemu "$qpid" "$STATE" && kill -KILL "$qpid" 2>/dev/null
    fi
    if [[ -n $spid ]]; then
        for ((i = 0; i < 50; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    fi
    clear_runtime
}

cmd_stop() {
    (($# == 0)) || usage_fail "stop takes no arguments"
    [[ -d $STATE ]] || { printf 'box.sh: no box running\n' >&2; return 0; }
    exec 7>"$STATE/.lock"
    flock -w 60 7 || box_fail "cannot lock $STATE/.lock"
    if ! box_running; then
        clear_runtime
        printf 'box.sh: no box running\n' >&2
        return 0
    fi
    stop_box
    printf 'box.sh: box stopped\n' >&2
}

# On exit: drop the finished job, or ask the box to kill an unfinished one
# (the box then removes its directory).
exec_cleanup() {
    stop_sentinel
    if [[ -f $JOB_DIR/rc ]]; then
        rm -rf "$JOB_DIR"
    elif [[ -e $STATE/queue/$JOB_ID ]] && rm "$STATE/queue/$JOB_ID" 2>/dev/null; then
        rm -rf "$JOB_DIR" # never started
    else
        { : >"$JOB_DIR/abandoned" && : >"$JOB_DIR/cancel"; } 2>/dev/null || true
        notify "$STATE"
    fi
    { : >"$STATE/last-used"; } 2>/dev/null || true
}

cmd_exec() {
    parse_job_opts "$@"
    if ! box_running || [[ ! -f $STATE/ready ]]; then
        box_fail "no box is running (state $STATE); start one with: $SELF start"
    fi
    local qpid=$BOX_QPID
    new_job "$STATE"
    : >"$STATE/last-used"
    trap exec_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    wait_job "$STATE" "$qpid"
    exit "$JOB_RC"
}

main() {
    (($#)) || usage_fail "missing subcommand"
    local sub=$1
    shift
    case $sub in
        build) (($# == 0)) || usage_fail "build takes no arguments"; cmd_build ;;
        run) cmd_run "$@" ;;
        start) cmd_start "$@" ;;
        exec) cmd_exec "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status ;;
        need) cmd_need ;;
        __supervise) cmd_supervise ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' ;;
        *) usage_fail "unknown subcommand '$sub'" ;;
    esac
}

main "$@"; exit

//! Real Linux guests on virtio-net (tap devices) and virtio-vsock (Firecracker's Unix-socket
//! protocol). Each test is one shell script run where Linux guests can run (the nested-KVM
//! box here): it creates the taps or sockets, starts the host side of the transfers with
//! `ember-stream` (resources/guest/stream.c, also in the guest), boots the guest with an
//! `ember.script=`, and prints what it measured; the test checks the lines.

mod common;

use std::process::Output;

use common::linux::{b64, guest, md5, microvm_kernel, pattern, sh, tail};
use common::{scratch, text};

const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// What the guest printed after `prefix` (the checksum of data it made up itself).
fn printed(out: &Output, prefix: &str) -> String {
    let (stdout, _) = text(out);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or("(none)")
        .trim()
        .to_string()
}

/// Asserts that `out`'s stdout has every line of `lines` and that the script succeeded.
fn expect_lines(out: &Output, lines: &[String]) {
    let (stdout, stderr) = text(out);
    for line in lines {
        assert!(
            stdout.lines().any(|l| l.trim_end() == line),
            "missing `{line}`\nstderr: {}\nstdout: {}",
            tail(&stderr),
            tail(&stdout)
        );
    }
    assert_eq!(out.status.code(), Some(0), "stderr: {}", tail(&stderr));
}

/// The guest side of the network test: finds each NIC by its MAC, gets the first one's
/// address over DHCP (busybox udhcpd on the host end) and sets the second one's, pings the
/// host end of each tap and moves data both ways over TCP.
const NET_GUEST: &str = r#"
ES=ember-stream
nic() { for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && echo ${n##*/}; done; }
for i in $(seq 100); do [ -n "$(nic 02:00:00:0e:00:02)" ] && break; sleep 0.1; done
A=$(nic 02:00:00:0e:00:01) B=$(nic 02:00:00:0e:00:02)
echo "NICS $(ls /sys/class/net | grep -c eth)"
printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface\nexit 0\n' >/tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
ip link set $A up && udhcpc -i $A -s /tmp/dhcp.sh -q -n -t 10 -T 2 >/dev/null 2>&1
echo "DHCP-ADDR $(ip -4 -o addr show dev $A | awk '{print $4}')"
ip addr add 172.30.2.2/24 dev $B && ip link set $B up
ping -c 3 -W 10 172.30.1.1 >/dev/null; echo "PING-A $?"
ping -c 3 -W 10 172.30.2.1 >/dev/null; echo "PING-B $?"
dd if=/dev/urandom of=/tmp/up bs=64k count=64 2>/dev/null
echo "UP-SUM $(md5sum </tmp/up | cut -d' ' -f1)"
$ES -t 120 connect tcp:172.30.1.1:7001 </tmp/up; echo "UP-RC $?"
echo "DOWN-SUM $($ES -t 120 connect tcp:172.30.1.1:7002 </dev/null | md5sum | cut -d' ' -f1)"
echo "ECHO-B $($ES -t 120 connect tcp:172.30.2.1:7003 </tmp/up | md5sum | cut -d' ' -f1)"
"#;

#[test]
fn two_nics_ping_and_move_data_both_ways() {
    let dir = scratch("net");
    let down = dir.join("down");
    std::fs::write(&down, pattern(4 << 20, 11)).unwrap();
    let script = format!(
        r#"
set -u
D={dir} ES=$PWD/build/guest/ember-stream
TA=embA$$ TB=embB$$ DHCPD=
cleanup() {{ kill $DHCPD $(jobs -p) 2>/dev/null; ip link del $TA; ip link del $TB; }}
trap cleanup EXIT
ip tuntap add dev $TA mode tap && ip addr add 172.30.1.1/24 dev $TA && ip link set $TA up || exit 90
printf 'interface %s\nstart 172.30.1.2\nend 172.30.1.2\noption subnet 255.255.255.0\nlease_file %s\npidfile %s\n' \
    $TA $D/leases $D/udhcpd.pid >$D/udhcpd.conf
touch $D/leases
busybox udhcpd -f $D/udhcpd.conf >$D/udhcpd.log 2>&1 & DHCPD=$!
ip tuntap add dev $TB mode tap && ip addr add 172.30.2.1/24 dev $TB && ip link set $TB up || exit 90
$ES -t 900 -n 1 listen tcp:172.30.1.1:7001 </dev/null >$D/up &
$ES -t 900 -n 1 listen tcp:172.30.1.1:7002 <$D/down &
$ES -t 900 -e -n 1 listen tcp:172.30.2.1:7003 </dev/null &
"$EMBER" run --kernel {kernel} --initrd {initrd} --cpus 2 --memory 256M \
    --net tap=$TA,mac=02:00:00:0e:00:01 --net tap=$TB,mac=02:00:00:0e:00:02,id=second \
    --boot-timer --log-level info \
    --cmdline '{BASE_CMDLINE} ember.boottimer ember.script={script}'
echo "EMBER-RC $?"
echo "HOST-UP-SUM $(md5sum <$D/up | cut -d' ' -f1)"
"#,
        dir = dir.display(),
        kernel = guest("vmlinuz"),
        initrd = guest("initramfs.cpio.gz"),
        script = b64(NET_GUEST),
    );
    let out = sh(&script);
    let up = printed(&out, "UP-SUM ");
    // The guest's /init signalled the boot timer (resources/guest/mark.c).
    let stderr = text(&out).1;
    assert!(
        stderr.contains("boot timer: guest signalled at t="),
        "{}",
        tail(&stderr)
    );
    expect_lines(
        &out,
        &[
            "NICS 2".into(),
            "DHCP-ADDR 172.30.1.2/24".into(),
            "PING-A 0".into(),
            "PING-B 0".into(),
            "UP-RC 0".into(),
            format!("HOST-UP-SUM {up}"),
            format!("DOWN-SUM {}", md5(&down)),
            format!("ECHO-B {up}"),
            "EMBER-SCRIPT-EXIT 0".into(),
            "EMBER-RC 0".into(),
        ],
    );
}

/// The guest side of the vsock test. Phase 1 (host-initiated): listeners on ports 6000 (a
/// file, checksummed) and 6001 (echo), then "GUEST-READY"; the host connects, and says "go"
/// on port 6999 when done. Phase 2 (guest-initiated): a file to the host's port 5001 and 32
/// concurrent echoes through port 5000.
const VSOCK_GUEST: &str = r#"
ES=ember-stream
dd if=/dev/urandom of=/tmp/up bs=64k count=64 2>/dev/null
echo "UP-SUM $(md5sum </tmp/up | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/chunk bs=64k count=4 2>/dev/null
C=$(md5sum </tmp/chunk | cut -d' ' -f1)
($ES -t 600 -n 1 listen vsock:-1:6000 </dev/null | md5sum | cut -d' ' -f1 >/tmp/down) &
$ES -t 600 -f -e listen vsock:-1:6001 </dev/null 2>/dev/null &
sleep 0.5
echo GUEST-READY
$ES -t 600 -n 1 -d listen vsock:-1:6999 </dev/null
echo "DOWN-SUM $(cat /tmp/down)"
$ES -t 120 connect vsock:2:5001 </tmp/up; echo "UP-RC $?"
# Wait for these 32 only: the listeners above are background jobs too.
P=
for i in $(seq 32); do ($ES -t 120 connect vsock:2:5000 </tmp/chunk | md5sum | cut -d' ' -f1 >/tmp/e$i) & P="$P $!"; done
wait $P
echo "GUEST-ECHO-OK $(cat /tmp/e* | grep -c $C)"
"#;

#[test]
fn vsock_both_directions_many_connections_and_a_vanishing_peer() {
    let dir = scratch("vsock");
    std::fs::write(dir.join("down"), pattern(4 << 20, 13)).unwrap();
    std::fs::write(dir.join("chunk"), pattern(256 << 10, 17)).unwrap();
    // The Firecracker config path: the vsock section of a Firecracker config file.
    let config = dir.join("vm.json");
    let script = format!(
        r#"
set -u
D={dir} ES=$PWD/build/guest/ember-stream
S=/dev/shm/ember-vsock-$$; U=$S/v.sock
mkdir -p $S
cleanup() {{ kill $(jobs -p) 2>/dev/null; rm -rf $S; }}
trap cleanup EXIT
cat >{config} <<EOF
{{"boot-source": {{"kernel_image_path": "{kernel}", "initrd_path": "{initrd}",
  "boot_args": "{BASE_CMDLINE} acpi=off ember.script={script}"}},
 "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
 "vsock": {{"guest_cid": 3, "uds_path": "$U"}}}}
EOF
$ES -t 900 -n 1 listen unix:${{U}}_5001 </dev/null >$D/up &
$ES -t 900 -f -e listen unix:${{U}}_5000 </dev/null &
"$EMBER" run --config-file {config} --serial file:$D/console &
VM=$!
for i in $(seq 1200); do
    grep -q GUEST-READY $D/console 2>/dev/null && break
    kill -0 $VM 2>/dev/null || {{ echo "VM exited early"; cat $D/console; exit 1; }}
    sleep 0.5
done
$ES -t 120 -F 6000 connect unix:$U <$D/down; echo "HOST-DOWN-RC $?"
# A client that vanishes mid-transfer, while 32 others echo through the guest.
$ES -t 120 -F 6001 -s 1000000000 -d connect unix:$U & KILLME=$!
for i in $(seq 32); do ($ES -t 120 -F 6001 connect unix:$U <$D/chunk | md5sum | cut -d' ' -f1 >$D/e$i) & done
sleep 2; kill -9 $KILLME
for i in $(seq 32); do while [ ! -s $D/e$i ]; do sleep 0.2; done; done
echo "HOST-ECHO-OK $(cat $D/e* | grep -c $(md5sum <$D/chunk | cut -d' ' -f1))"
# Refused: nobody listens on guest port 7777; a malformed request line gets no reply.
$ES -t 60 -F 7777 connect unix:$U </dev/null 2>/dev/null; echo "NO-LISTENER-RC $?"
echo "MALFORMED-REPLY-BYTES $(printf 'CONNECT x\n' | $ES -t 60 connect unix:$U | wc -c)"
echo "go" | $ES -t 60 -F 6999 connect unix:$U >/dev/null; echo "GO-RC $?"
wait $VM; echo "EMBER-RC $?"
cat $D/console
echo "HOST-UP-SUM $(md5sum <$D/up | cut -d' ' -f1)"
"#,
        dir = dir.display(),
        config = config.display(),
        kernel = microvm_kernel(),
        initrd = guest("initramfs.cpio.gz"),
        script = b64(VSOCK_GUEST),
    );
    let out = sh(&script);
    let up = printed(&out, "UP-SUM ");
    expect_lines(
        &out,
        &[
            "HOST-DOWN-RC 0".into(),
            format!("DOWN-SUM {}", md5(&dir.join("down"))),
            "HOST-ECHO-OK 32".into(),
            "NO-LISTENER-RC 1".into(),
            "MALFORMED-REPLY-BYTES 0".into(),
            "GO-RC 0".into(),
            "UP-RC 0".into(),
            format!("HOST-UP-SUM {up}"),
            "GUEST-ECHO-OK 32".into(),
            "EMBER-SCRIPT-EXIT 0".into(),
            "EMBER-RC 0".into(),
        ],
    );
}

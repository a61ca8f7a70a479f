//! Failures: vanishing host peers, hostile TX chains, credit overruns, reset, and creation
//! errors.

use std::io::Write;

use super::*;
use crate::{VsockError, BUF_ALLOC, MAX_PKT_DATA};

#[test]
fn host_peer_vanishing_resets_only_its_connection() {
    let mut h = Harness::new(32);
    let l = h.listen(52);
    let mut streams = Vec::new();
    for src in [4000, 4001] {
        h.send(guest_hdr(OP_REQUEST, src, 52, 65536, 0), &[]);
        streams.push(l.accept().unwrap().0);
    }
    h.take(|_| true);
    let survivor = streams.pop().unwrap();
    drop(streams.pop());
    let p = h.expect("reset", |p| p.hdr.dst_port == 4000);
    assert_eq!(p.hdr.op, OP_RST);
    // Data for the dead connection is refused; the other one still works.
    h.send(guest_hdr(OP_RW, 4000, 52, 65536, 0), b"anyone?");
    assert_eq!(h.expect("reset", |p| p.hdr.dst_port == 4000).hdr.op, OP_RST);
    h.send(guest_hdr(OP_RW, 4001, 52, 65536, 0), b"still");
    let mut got = [0u8; 5];
    (&survivor).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
    (&survivor).write_all(b"yes").unwrap();
    assert_eq!(h.expect("data", |p| p.hdr.op == OP_RW).data, b"yes");
}

#[test]
fn host_peer_reset_while_guest_data_is_buffered() {
    let mut h = Harness::new(32);
    let l = h.listen(52);
    h.send(guest_hdr(OP_REQUEST, 4100, 52, 65536, 0), &[]);
    let (s, _) = l.accept().unwrap();
    h.take(|_| true);
    // Fill the host socket and the device buffer, then the host peer goes away.
    let chunk = vec![7u8; MAX_PKT_DATA as usize];
    for _ in 0..6 {
        h.send(guest_hdr(OP_RW, 4100, 52, 65536, 0), &chunk);
    }
    drop(s);
    let p = h.expect("reset", |p| p.hdr.op == OP_RST);
    assert_eq!(p.hdr.dst_port, 4100);
    assert!(h.dev.lock().unwrap().muxer.conns.is_empty());
}

#[test]
fn credit_overrun_resets_the_connection() {
    let mut h = Harness::new(32);
    let l = h.listen(52);
    h.send(guest_hdr(OP_REQUEST, 4200, 52, 65536, 0), &[]);
    let (_s, _) = l.accept().unwrap();
    h.take(|_| true);
    let chunk = vec![1u8; MAX_PKT_DATA as usize];
    // The host never reads: after its socket buffer and BUF_ALLOC, the guest overruns.
    let limit = 2 * BUF_ALLOC as usize + (8 << 20);
    let mut sent = 0;
    while h.take(|p| p.hdr.op == OP_RST).is_empty() {
        assert!(sent < limit, "no reset after {sent} bytes");
        h.send(guest_hdr(OP_RW, 4200, 52, 65536, 0), &chunk);
        sent += chunk.len();
    }
    assert!(h.dev.lock().unwrap().muxer.conns.is_empty());
}

#[test]
fn hostile_tx_chains_are_dropped() {
    let mut h = Harness::new(16);
    let base = 0x1F0_0000;
    let good = guest_hdr(OP_REQUEST, 5000, 99, 65536, 0);
    put(h.mem, base, &good.to_bytes());
    // Wrong source CID.
    let mut bad = good;
    bad.src_cid = 9;
    put(h.mem, base + 0x100, &bad.to_bytes());
    // Payload length past the limit.
    let mut huge = guest_hdr(OP_RW, 5000, 99, 65536, 0);
    huge.len = u32::MAX;
    put(h.mem, base + 0x200, &huge.to_bytes());
    let mut short = huge;
    short.len = 100;
    put(h.mem, base + 0x300, &short.to_bytes());
    let outside = 0x4000_0000;
    let chains: Vec<Vec<Seg>> = vec![
        vec![r(base, 10)],                              // header too short
        vec![w(base, HEADER_LEN)],                      // device-writable header
        vec![r(outside, HEADER_LEN)],                   // outside memory
        vec![r(MEM_SIZE as u64 - 8, HEADER_LEN)],       // straddles the end
        vec![r(base + 0x100, HEADER_LEN)],              // wrong CID
        vec![r(base + 0x200, HEADER_LEN), r(base, 64)], // huge len
        vec![r(base + 0x300, HEADER_LEN), r(base, 10)], // data shorter than len
        vec![r(base + 0x300, HEADER_LEN), r(outside, 100)],
        vec![r(base + 0x300, HEADER_LEN)], // missing data descriptor
    ];
    for segs in &chains {
        h.tx.push(segs);
    }
    // A chain whose header descriptor links back to itself.
    let head = h.tx.push(&[r(base + 0x300, HEADER_LEN), r(base, 100)]);
    let flags = VRING_DESC_F_NEXT as u16;
    let looped = RawDescriptor::from(SplitDescriptor::new(base + 0x300, HEADER_LEN, flags, head));
    h.tx.set_desc(head, looped);
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.outstanding(), 0, "every chain completed");
    assert!(h.tx.take_used().iter().all(|&(_, len)| len == 0));
    assert!(h.inbox.is_empty(), "{:?}", h.inbox);
    // The device still works.
    h.send(good, &[]);
    assert_eq!(h.expect("reset", |_| true).hdr.op, OP_RST);
}

#[test]
fn reset_drops_connections_and_keeps_listening() {
    let mut h = Harness::new(16);
    let (mut s, _) = h.open_host_conn(100, 65536);
    h.dev.lock().unwrap().reset();
    h.pump();
    s.set_nonblocking(false).unwrap();
    assert_eq!(read_to_end(&mut s).unwrap(), b"");
    assert!(h.dev.lock().unwrap().muxer.conns.is_empty());
    // Host clients can still connect; the request waits for the next activation.
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    h.pump();
    assert_eq!(h.dev.lock().unwrap().muxer.conns.len(), 1);
}

#[test]
fn creation_errors_and_socket_cleanup() {
    let dir = temp_dir();
    let path = dir.join("v.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        let e = Vsock::new(cid, &path).err().unwrap();
        assert!(matches!(e, VsockError::InvalidCid(c) if c == cid));
        assert!(e.to_string().contains(&cid.to_string()), "{e}");
    }
    let e = Vsock::new(3, &dir.join("missing/v.sock")).err().unwrap();
    assert!(matches!(e, VsockError::NoParentDir(_)), "{e}");
    assert!(e.to_string().contains("missing/v.sock"), "{e}");

    let dev = Vsock::new(3, &path).unwrap();
    assert!(path.exists());
    let e = Vsock::new(4, &path).err().unwrap();
    assert!(matches!(e, VsockError::PathExists(_)), "{e}");
    assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
    drop(dev);
    assert!(!path.exists(), "socket file removed on drop");

    // A user file is never replaced or removed.
    std::fs::write(&path, b"precious").unwrap();
    assert!(matches!(
        Vsock::new(3, &path),
        Err(VsockError::PathExists(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn device_face() {
    let h = Harness::new(0);
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        dev.features(),
        ember_virtio::VIRTIO_F_VERSION_1 | ember_virtio::VIRTIO_RING_F_EVENT_IDX
    );
}

/// Set in the child process that runs `accept_failures_pause_the_listener` for real: it lowers
/// the process's fd limit, which must not affect the other tests.
const FD_LIMIT_CHILD: &str = "EMBER_VSOCK_TEST_FD_LIMIT_CHILD";

#[test]
fn accept_failures_pause_the_listener() {
    if std::env::var_os(FD_LIMIT_CHILD).is_some() {
        return accept_failures_child();
    }
    let name = "tests::robust::accept_failures_pause_the_listener";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(FD_LIMIT_CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_fd_limit(soft: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// A host client waits in the listener's backlog while the VMM is out of file descriptors:
/// the level-triggered loop must not spin on the listener, and accepting resumes later.
fn accept_failures_child() {
    let mut h = Harness::new(16);
    h.pump();
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    // SAFETY: `dup` of stdin gives the lowest free fd number, closed right away.
    let lowest_free = unsafe {
        let fd = libc::dup(0);
        assert!(fd >= 0);
        libc::close(fd);
        fd
    };
    set_fd_limit(lowest_free as libc::rlim_t);
    let start = Instant::now();
    let mut events = 0;
    while start.elapsed() < Duration::from_millis(300) {
        events += h.em.run_with_timeout(10).unwrap();
    }
    set_fd_limit(libc::rlim_t::MAX);
    assert!(events < 100, "{events} event-loop wake-ups in 300 ms");
    // Once descriptors are available again, the client gets through.
    let req = h.expect("request", |p| p.hdr.op == OP_REQUEST);
    assert_eq!(req.hdr.dst_port, 5);
}

//! Host-initiated connections: `CONNECT <port>\n`, the guest's answer, and the `OK` line.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;
use crate::{BUF_ALLOC, FIRST_HOST_PORT};

#[test]
fn connect_ok_then_data_both_ways() {
    let mut h = Harness::new(16);
    let (mut s, req) = h.host_connect(5000);
    let r = req.hdr;
    assert_eq!((r.src_cid, r.dst_cid, r.dst_port), (HOST_CID, CID, 5000));
    assert_eq!(
        (r.src_port, r.type_, r.buf_alloc),
        (FIRST_HOST_PORT, TYPE_STREAM, BUF_ALLOC)
    );
    assert_eq!(r.len, 0);
    let local = r.src_port;
    h.send(guest_hdr(OP_RESPONSE, 5000, local, 65536, 0), &[]);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut ok = [0u8; 14];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, format!("OK {local}\n").as_bytes());

    s.write_all(b"hello guest").unwrap();
    let p = h.expect("data", |p| p.hdr.op == OP_RW);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (local, 5000));
    assert_eq!(p.data, b"hello guest");

    h.send(guest_hdr(OP_RW, 5000, local, 65536, 11), b"hello host");
    let mut got = [0u8; 10];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");

    // A second connection gets the next host port.
    let (_s2, req2) = h.host_connect(5000);
    assert_eq!(req2.hdr.src_port, FIRST_HOST_PORT + 1);
}

#[test]
fn bytes_after_the_newline_start_the_stream() {
    let mut h = Harness::new(16);
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 77\nearly bytes").unwrap();
    let req = h.expect("request", |p| p.hdr.op == OP_REQUEST);
    assert_eq!(req.hdr.dst_port, 77);
    // Nothing is read for the guest before it accepts.
    assert!(h.take(|p| p.hdr.op == OP_RW).is_empty());
    h.send(guest_hdr(OP_RESPONSE, 77, req.hdr.src_port, 65536, 0), &[]);
    let p = h.expect("data", |p| p.hdr.op == OP_RW);
    assert_eq!(p.data, b"early bytes");
}

#[test]
fn guest_refusal_closes_without_ok() {
    let mut h = Harness::new(16);
    let (mut s, req) = h.host_connect(6000);
    h.send(guest_hdr(OP_RST, 6000, req.hdr.src_port, 0, 0), &[]);
    assert_eq!(read_to_end(&mut s).unwrap(), b"");
    // The host port is free again.
    let (_s, req) = h.host_connect(6000);
    assert_eq!(req.hdr.src_port, FIRST_HOST_PORT + 1);
}

#[test]
fn malformed_lines_are_closed() {
    let mut h = Harness::new(16);
    for line in [
        &b"CONNECT x\n"[..],
        b"HELLO\n",
        b"CONNECT 1 2\n",
        &[b'C'; 40],
    ] {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        h.pump();
        // Closed, possibly with unread bytes (a reset).
        assert_eq!(read_to_end(&mut s).unwrap_or_default(), b"", "{line:?}");
    }
    // A client that hangs up mid-line is dropped too.
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONN").unwrap();
    drop(s);
    h.pump();
    assert!(h.inbox.is_empty(), "{:?}", h.inbox);
    assert!(h.dev.lock().unwrap().muxer.pending.is_empty());
}

#[test]
fn timeouts_close_slow_clients_and_unanswered_requests() {
    let mut h = Harness::new(16);
    let mut slow = UnixStream::connect(&h.uds).unwrap();
    slow.write_all(b"CONNECT 5").unwrap();
    let (mut unanswered, req) = h.host_connect(8000);
    std::thread::sleep(Duration::from_millis(350));
    let rst = h.expect("reset", |p| p.hdr.op == OP_RST);
    assert_eq!(
        (rst.hdr.src_port, rst.hdr.dst_port),
        (req.hdr.src_port, 8000)
    );
    assert_eq!(read_to_end(&mut slow).unwrap(), b"");
    assert_eq!(read_to_end(&mut unanswered).unwrap(), b"");
    // A late answer is refused.
    h.send(guest_hdr(OP_RESPONSE, 8000, req.hdr.src_port, 4096, 0), &[]);
    h.expect("reset", |p| p.hdr.op == OP_RST);
    assert!(h.dev.lock().unwrap().muxer.conns.is_empty());
}

#[test]
fn requests_wait_for_rx_buffers() {
    let mut h = Harness::new(0);
    let (_s, _) = {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(b"CONNECT 9\n").unwrap();
        h.pump();
        assert!(h.inbox.is_empty());
        h.post_rx(1);
        (s, h.expect("request", |p| p.hdr.op == OP_REQUEST))
    };
}

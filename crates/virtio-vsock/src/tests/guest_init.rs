//! Guest-initiated connections to `<uds>_<port>`, refusals and half-closes.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use super::*;
use crate::BUF_ALLOC;

/// Connects guest port `src` to host port `port` and accepts it on `l`.
fn guest_open(h: &mut Harness, l: &UnixListener, src: u32, port: u32) -> UnixStream {
    h.send(guest_hdr(OP_REQUEST, src, port, 65536, 0), &[]);
    let p = h.expect("response", |p| p.hdr.dst_port == src);
    assert_eq!(p.hdr.op, OP_RESPONSE);
    assert_eq!(
        (p.hdr.src_cid, p.hdr.src_port, p.hdr.buf_alloc),
        (HOST_CID, port, BUF_ALLOC)
    );
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

#[test]
fn connect_to_listener_and_exchange_data() {
    let mut h = Harness::new(16);
    let l = h.listen(52);
    let mut s = guest_open(&mut h, &l, 1234, 52);
    h.send(guest_hdr(OP_RW, 1234, 52, 65536, 0), b"ping");
    let mut got = [0u8; 4];
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").unwrap();
    let p = h.expect("data", |p| p.hdr.op == OP_RW);
    assert_eq!(
        (p.hdr.src_port, p.hdr.dst_port, &p.data[..]),
        (52, 1234, &b"pong"[..])
    );
    assert_eq!(p.hdr.fwd_cnt, 4);
}

#[test]
fn refusals() {
    let mut h = Harness::new(16);
    // No listener.
    h.send(guest_hdr(OP_REQUEST, 1000, 53, 65536, 0), &[]);
    let p = h.expect("reset", |p| p.hdr.dst_port == 1000);
    assert_eq!(
        (p.hdr.op, p.hdr.src_port, p.hdr.src_cid),
        (OP_RST, 53, HOST_CID)
    );
    // Another CID.
    let mut hdr = guest_hdr(OP_REQUEST, 1001, 53, 65536, 0);
    hdr.dst_cid = 7;
    h.send(hdr, &[]);
    let p = h.expect("reset", |p| p.hdr.dst_port == 1001);
    assert_eq!((p.hdr.op, p.hdr.src_cid), (OP_RST, 7));
    // Data or shutdown for no connection.
    h.send(guest_hdr(OP_RW, 1002, 53, 65536, 0), b"x");
    assert_eq!(h.expect("reset", |p| p.hdr.dst_port == 1002).hdr.op, OP_RST);
    // An RST for no connection gets no answer.
    h.send(guest_hdr(OP_RST, 1003, 53, 0, 0), &[]);
    h.pump();
    assert!(h.inbox.is_empty(), "{:?}", h.inbox);
}

#[test]
fn guest_shuts_down_sending() {
    let mut h = Harness::new(16);
    let l = h.listen(52);
    let mut s = guest_open(&mut h, &l, 2000, 52);
    h.send(guest_hdr(OP_RW, 2000, 52, 65536, 0), b"last words");
    h.send(
        guest_hdr(OP_SHUTDOWN, 2000, 52, 65536, 0).with_flags(SHUTDOWN_SEND),
        &[],
    );
    assert_eq!(read_to_end(&mut s).unwrap(), b"last words");
    // The host can still answer.
    s.write_all(b"reply").unwrap();
    let p = h.expect("data", |p| p.hdr.op == OP_RW);
    assert_eq!(p.data, b"reply");
    // Host closing too ends the connection.
    drop(s);
    assert_eq!(h.expect("reset", |p| p.hdr.op != OP_RW).hdr.op, OP_RST);
    assert!(h.dev.lock().unwrap().muxer.conns.is_empty());
}

#[test]
fn host_shuts_down_sending() {
    let mut h = Harness::new(16);
    let l = h.listen(52);
    let s = guest_open(&mut h, &l, 2001, 52);
    (&s).write_all(b"bye").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let p = h.expect("data", |p| p.hdr.op == OP_RW);
    assert_eq!(p.data, b"bye");
    let p = h.expect("shutdown", |p| p.hdr.op == OP_SHUTDOWN);
    assert_eq!(p.hdr.flags, SHUTDOWN_SEND);
    // The guest can still send.
    h.send(guest_hdr(OP_RW, 2001, 52, 65536, 3), b"still here");
    let mut s = s;
    let mut got = [0u8; 10];
    s.set_nonblocking(false).unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    // The guest closing (both flags) ends it with RST and EOF on the host.
    h.send(
        guest_hdr(OP_SHUTDOWN, 2001, 52, 65536, 3).with_flags(3),
        &[],
    );
    assert_eq!(h.expect("reset", |_| true).hdr.op, OP_RST);
    assert_eq!(read_to_end(&mut s).unwrap(), b"");
}

#[test]
fn guest_shuts_down_receiving() {
    let mut h = Harness::new(16);
    let l = h.listen(52);
    let s = guest_open(&mut h, &l, 2002, 52);
    h.send(
        guest_hdr(OP_SHUTDOWN, 2002, 52, 65536, 0).with_flags(SHUTDOWN_RCV),
        &[],
    );
    (&s).write_all(b"unwanted").unwrap();
    h.pump();
    assert!(h.inbox.is_empty(), "{:?}", h.inbox);
    // Guest to host still works.
    h.send(guest_hdr(OP_RW, 2002, 52, 65536, 0), b"ok");
    let mut got = [0u8; 2];
    let mut s = s;
    s.set_nonblocking(false).unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}

#[test]
fn packets_of_a_closed_connection_do_not_reach_its_successor() {
    // No RX buffers: control packets wait in the device.
    let mut h = Harness::new(0);
    let l = h.listen(52);
    h.send(guest_hdr(OP_REQUEST, 1300, 52, 65536, 0), &[]);
    let (_s1, _) = l.accept().unwrap();
    // The device owes the first connection a credit update when the guest closes it and
    // reconnects from the same port.
    h.send(guest_hdr(OP_CREDIT_REQUEST, 1300, 52, 65536, 0), &[]);
    h.send(guest_hdr(OP_RST, 1300, 52, 65536, 0), &[]);
    h.send(guest_hdr(OP_REQUEST, 1300, 52, 65536, 0), &[]);
    let (_s2, _) = l.accept().unwrap();
    h.post_rx(16);
    h.pump();
    // A guest socket that is connecting treats anything but RESPONSE or RST as a protocol
    // error: the first connection's leftovers (its RESPONSE and CREDIT_UPDATE) must not
    // reach it.
    let ops: Vec<u16> = h.inbox.iter().map(|p| p.hdr.op).collect();
    assert_eq!(ops, [OP_RESPONSE], "{:?}", h.inbox);
}

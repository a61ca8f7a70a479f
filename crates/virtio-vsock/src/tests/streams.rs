//! Bulk data through the credit limits in both directions, and many interleaved connections.

use std::io::Write;

use super::*;
use crate::BUF_ALLOC;

/// The guest end of one connection: what it received and the credit it has given.
struct GuestEnd {
    port: u32,
    local: u32,
    buf_alloc: u32,
    received: Vec<u8>,
    /// Bytes the guest application consumed (its `fwd_cnt`).
    consumed: u32,
    credit_requests: usize,
}

impl GuestEnd {
    /// Takes this connection's packets from the inbox, checking the device kept within credit.
    fn absorb(&mut self, h: &mut Harness) {
        let (port, local) = (self.port, self.local);
        for p in h.take(|p| p.hdr.dst_port == port && p.hdr.src_port == local) {
            match p.hdr.op {
                OP_RW => self.received.extend_from_slice(&p.data),
                OP_CREDIT_REQUEST => self.credit_requests += 1,
                OP_CREDIT_UPDATE => {}
                op => panic!("unexpected op {op}"),
            }
            let in_flight = self.received.len() as u32 - self.consumed;
            assert!(
                in_flight <= self.buf_alloc,
                "device overran the guest's credit"
            );
        }
    }

    /// The application reads everything and the guest announces the freed space.
    fn consume(&mut self, h: &mut Harness) {
        self.consumed = self.received.len() as u32;
        let hdr = guest_hdr(
            OP_CREDIT_UPDATE,
            self.port,
            self.local,
            self.buf_alloc,
            self.consumed,
        );
        h.send(hdr, &[]);
    }
}

#[test]
fn host_to_guest_stops_at_credit_and_resumes() {
    let mut h = Harness::new(64);
    let small = 16 * 1024;
    let (mut s, local) = h.open_host_conn(7000, small);
    let data = pattern(300 * 1024, 1);
    let mut sent = 0;
    let mut g = GuestEnd {
        port: 7000,
        local,
        buf_alloc: small,
        received: Vec::new(),
        consumed: 0,
        credit_requests: 0,
    };
    let mut stalls = 0;
    while g.received.len() < data.len() {
        if sent < data.len() {
            match s.write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        h.pump();
        g.absorb(&mut h);
        if g.received.len() as u32 - g.consumed == small {
            stalls += 1;
        }
        g.consume(&mut h);
    }
    assert_eq!(g.received, data);
    assert!(stalls > 0, "the host side never hit the credit limit");
    assert!(
        g.credit_requests > 0,
        "no CREDIT_REQUEST when out of credit"
    );
}

#[test]
fn guest_to_host_within_advertised_buffer() {
    let mut h = Harness::new(64);
    let (mut s, local) = h.open_host_conn(7001, 65536);
    let data = pattern(400 * 1024, 2);
    // The host does not read: the device buffers up to BUF_ALLOC, as advertised.
    let mut sent = 0usize;
    let mut fwd_cnt = 0u32; // the device's fwd_cnt as the guest last saw it
    let mut received = Vec::new();
    let mut updates = 0;
    while received.len() < data.len() {
        let credit = (BUF_ALLOC - (sent as u32 - fwd_cnt)) as usize;
        let n = credit.min(4096).min(data.len() - sent);
        if n > 0 {
            h.send(
                guest_hdr(OP_RW, 7001, local, 65536, 0),
                &data[sent..sent + n],
            );
            sent += n;
        } else {
            // Out of credit: now the host reads.
            received.extend(read_avail(&mut s).unwrap());
            h.pump();
        }
        for p in h.take(|p| p.hdr.dst_port == 7001) {
            assert!(matches!(p.hdr.op, OP_CREDIT_UPDATE | OP_RW), "{p:?}");
            assert_eq!(p.hdr.buf_alloc, BUF_ALLOC);
            updates += 1;
            fwd_cnt = p.hdr.fwd_cnt;
        }
        if sent == data.len() {
            received.extend(read_avail(&mut s).unwrap());
            h.pump();
        }
    }
    assert_eq!(received, data);
    assert!(updates > 0);
    assert!(
        h.dev.lock().unwrap().muxer.conns.len() == 1,
        "connection survived"
    );
}

#[test]
fn thirty_two_interleaved_connections() {
    let mut h = Harness::new(64);
    let l = h.listen(60);
    let mut hosts = Vec::new();
    for i in 0..32u32 {
        h.send(guest_hdr(OP_REQUEST, 3000 + i, 60, 1 << 20, 0), &[]);
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        hosts.push(s);
    }
    assert_eq!(h.take(|p| p.hdr.op == OP_RESPONSE).len(), 32);
    let chunk = |i: u32, round: u32| format!("conn {i} round {round};").repeat(200);
    for round in 0..4 {
        for (i, s) in hosts.iter_mut().enumerate() {
            s.write_all(chunk(i as u32, round).as_bytes()).unwrap();
        }
        for i in 0..32u32 {
            let msg = chunk(i, round);
            h.send(guest_hdr(OP_RW, 3000 + i, 60, 1 << 20, 0), msg.as_bytes());
        }
    }
    h.pump();
    // Packets of different connections are interleaved, not one connection after the other.
    let order: Vec<u32> = h.inbox.iter().take(32).map(|p| p.hdr.dst_port).collect();
    let distinct: std::collections::HashSet<_> = order.iter().collect();
    assert!(distinct.len() >= 16, "no round robin: {order:?}");
    let mut by_port: HashMap<u32, Vec<u8>> = HashMap::new();
    for p in h.take(|p| p.hdr.op == OP_RW) {
        by_port.entry(p.hdr.dst_port).or_default().extend(p.data);
    }
    for (i, s) in hosts.iter_mut().enumerate() {
        let want: String = (0..4).map(|r| chunk(i as u32, r)).collect();
        assert_eq!(by_port[&(3000 + i as u32)], want.as_bytes());
        assert_eq!(read_avail(s).unwrap(), want.as_bytes());
    }
}

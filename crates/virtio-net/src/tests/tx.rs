//! Transmit queue logic against a socket pair.

use ember_virtio::testing::{put, r, raw, w, Driver, Seg};
use ember_virtio::{GuestMemory, Queue, QueueT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

use super::common::*;
use crate::device::NetCounters;
use crate::header::Offloads;
use crate::tx::{process_tx, TxContext, TxState};

const QSIZE: u16 = 32;

struct Tx<'a> {
    mem: &'a GuestMemory,
    drv: Driver<'a>,
    q: Queue,
    dev: Sock,
    peer: Sock,
    offloads: Offloads,
    ctx: TxContext,
    counters: NetCounters,
}

impl<'a> Tx<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let drv = Driver::new(mem, QSIZE, 0);
        let q = drv.queue();
        let (dev, peer) = socket_pair();
        Self {
            mem,
            drv,
            q,
            dev,
            peer,
            offloads: Offloads::default(),
            ctx: TxContext::default(),
            counters: NetCounters::default(),
        }
    }

    fn run(&mut self) -> (TxState, bool) {
        process_tx(
            &mut self.q,
            self.mem,
            &mut self.dev,
            &self.offloads,
            &mut self.ctx,
            &mut self.counters,
        )
        .expect("queue error")
    }

    /// Puts header + frame at `addr` and returns the bytes.
    fn stage(&self, addr: u64, flags: u8, gso: u8, data: &[u8]) -> Vec<u8> {
        let bytes = with_header(flags, gso, data);
        put(self.mem, addr, &bytes);
        bytes
    }
}

#[test]
fn frames_reach_the_host_whatever_the_layout() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    let a = t.stage(BUFS, 0, 0, &frame(100, 1));
    let b = t.stage(BUFS + 0x1000, 0, 0, &frame(1514, 2));
    // Header alone, then the frame split in two.
    let h1 = t
        .drv
        .push(&[r(BUFS, 12), r(BUFS + 12, 50), r(BUFS + 62, 50)]);
    // Header and frame in one buffer.
    let h2 = t.drv.push(&[r(BUFS + 0x1000, 1526)]);
    // Header split across descriptors, frame straddling the two memory regions.
    let c = frame(3000, 3);
    put(&mem, REGION - 1000, &with_header(0, 0, &c));
    let h3 = t.drv.push(&[r(REGION - 1000, 5), r(REGION - 995, 3007)]);
    let (state, _) = t.run();
    assert_eq!(state, TxState::Idle);
    assert_eq!(t.peer.recv_all(), vec![a, b, with_header(0, 0, &c)]);
    assert_eq!(t.drv.used_idx(), 3);
    for (n, head) in [h1, h2, h3].into_iter().enumerate() {
        assert_eq!(t.drv.used(n as u16), (u32::from(head), 0));
    }
    assert_eq!(t.counters.tx_frames, 3);
    assert_eq!(t.counters.tx_bytes, 100 + 1514 + 3000);
}

#[test]
fn frames_through_indirect_tables() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    let a = t.stage(BUFS, 0, 0, &frame(1514, 5));
    // Header, then the frame in three pieces, all in one indirect table.
    let table = BUFS + 0x8000;
    let entries = [
        raw(BUFS, 12, NEXT, 1),
        raw(BUFS + 12, 500, NEXT, 2),
        raw(BUFS + 512, 14, NEXT, 3),
        raw(BUFS + 526, 1000, 0, 0),
    ];
    for (i, d) in entries.into_iter().enumerate() {
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    t.drv.set_desc(0, raw(table, 64, INDIRECT, 0));
    // A table whose length is not whole descriptors, and one outside guest memory.
    t.drv.set_desc(1, raw(table, 40, INDIRECT, 0));
    t.drv.set_desc(2, raw(REGION * 64, 64, INDIRECT, 0));
    for head in 0..3 {
        t.drv.offer(head);
    }
    let (state, _) = t.run();
    assert_eq!(state, TxState::Idle);
    assert_eq!(t.peer.recv_all(), vec![a]);
    let used: Vec<_> = (0..3).map(|n| t.drv.used(n)).collect();
    assert_eq!(used, [(0, 0), (1, 0), (2, 0)]);
    assert_eq!((t.counters.tx_frames, t.counters.tx_dropped), (1, 2));
}

#[test]
fn the_header_sent_is_the_checked_copy() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    // DATA_VALID and a stale num_buffers from the guest are not passed on.
    let mut bytes = t.stage(BUFS, 2, 0, &frame(60, 4));
    put(&mem, BUFS + 10, &[7, 0]);
    t.drv.push(&[r(BUFS, 72)]);
    t.run();
    bytes[0] = 0;
    assert_eq!(t.peer.recv_all(), vec![bytes]);
}

#[test]
fn offloads_need_negotiation() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    let csum = t.stage(BUFS, 1, 0, &frame(60, 5)); // NEEDS_CSUM
    let tso = t.stage(BUFS + 0x1000, 1, 1, &frame(3000, 6)); // TCPv4
    t.drv.push(&[r(BUFS, 72)]);
    t.drv.push(&[r(BUFS + 0x1000, 3012)]);
    t.run();
    assert!(t.peer.recv_all().is_empty());
    assert_eq!(t.counters.tx_dropped, 2);
    t.offloads = Offloads::from_guest(offload_features());
    t.drv.push(&[r(BUFS, 72)]);
    t.drv.push(&[r(BUFS + 0x1000, 3012)]);
    t.run();
    assert_eq!(t.peer.recv_all(), vec![csum, tso]);
}

#[test]
fn hostile_chains_are_completed_empty() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    let ok = t.stage(BUFS, 0, 0, &frame(60, 7));
    let cases: [&[Seg]; 7] = [
        &[r(BUFS, 72), w(BUFS + 0x2000, 100)], // writable descriptor
        &[w(BUFS, 72)],                        // writable only
        &[r(BUFS, 0)],                         // zero length
        &[r(BUFS, 12)],                        // header only
        &[r(BUFS, 25)],                        // shorter than an Ethernet header
        &[r(BUFS, 12), r(OUTSIDE, 100)],       // outside memory
        &[r(MEM_END - 40, 80)],                // running off the end
    ];
    for segs in cases {
        t.drv.push(segs);
    }
    // Too long: 12 + 65551 bytes over two descriptors.
    t.drv.push(&[r(BUFS, 40000), r(BUFS, 25563)]);
    // A loop: one descriptor chained to itself.
    t.drv
        .set_desc(20, raw(BUFS, 40000, VRING_DESC_F_NEXT as u16, 20));
    t.drv.offer(20);
    t.drv.push(&[r(BUFS, 72)]);
    let (state, _) = t.run();
    assert_eq!(state, TxState::Idle);
    assert_eq!(t.drv.used_idx(), 10);
    for n in 0..10 {
        assert_eq!(t.drv.used(n).1, 0);
    }
    // Only the good frame got through (the loop is cut at the queue size, and too long).
    assert_eq!(t.peer.recv_all(), vec![ok]);
    assert_eq!(t.counters.tx_dropped, 9);
}

#[test]
fn backpressure_keeps_chains_and_order() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    t.dev.set_sndbuf(4096);
    let filler = vec![0xeeu8; 1000];
    let mut fillers = 0;
    while t.dev.send(&filler).is_ok() {
        fillers += 1;
    }
    let mut sent = Vec::new();
    for i in 0..8u64 {
        let addr = BUFS + i * 0x1000;
        sent.push(t.stage(addr, 0, 0, &frame(1000, i as u8)));
        t.drv.push(&[r(addr, 12), r(addr + 12, 1000)]);
    }
    let (state, notify) = t.run();
    assert_eq!(state, TxState::Blocked);
    assert!(!notify);
    assert_eq!(
        t.drv.used_idx(),
        0,
        "nothing consumed while the host is full"
    );
    assert_eq!(t.q.next_avail(), 0);
    // A kick while still blocked changes nothing.
    assert_eq!(t.run().0, TxState::Blocked);
    assert_eq!(t.drv.used_idx(), 0);
    let mut got = Vec::new();
    loop {
        let msgs = t.peer.recv_all();
        got.extend(msgs.into_iter().filter(|m| m[..] != filler[..]));
        let (state, _) = t.run();
        if state == TxState::Idle {
            break;
        }
        assert_eq!(state, TxState::Blocked);
    }
    got.extend(t.peer.recv_all());
    assert!(fillers > 0);
    assert_eq!(got, sent);
    assert_eq!(t.drv.used_idx(), 8);
    assert_eq!(t.counters.tx_frames, 8);
    assert_eq!(t.counters.tx_dropped, 0);
}

#[test]
fn host_errors_drop_and_continue() {
    let mem = guest_memory();
    let mut t = Tx::new(&mem);
    let (dev, peer) = socket_pair();
    drop(peer);
    t.dev = dev; // writes now fail with EPIPE/ECONNRESET
    t.stage(BUFS, 0, 0, &frame(60, 1));
    t.drv.push(&[r(BUFS, 72)]);
    t.drv.push(&[r(BUFS, 72)]);
    assert_eq!(t.run().0, TxState::Idle);
    assert_eq!(t.drv.used_idx(), 2);
    assert_eq!(t.counters.tx_dropped, 2);
}

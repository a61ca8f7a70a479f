//! Receive queue logic against a socket pair.

use ember_virtio::testing::{get, r, raw, w, Driver, Seg};
use ember_virtio::GuestMemory;
use ember_virtio::Queue;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::common::*;
use crate::device::NetCounters;
use crate::header::Offloads;
use crate::rx::{process_rx, RxConfig, RxContext, RxState};
use crate::{BUDGET, HDR_LEN};

const QSIZE: u16 = 32;
const PAGE: u64 = 0x1000;
/// Bytes of guard after each page-sized buffer.
const GUARD: u64 = 64;

struct Rx<'a> {
    mem: &'a GuestMemory,
    drv: Driver<'a>,
    q: Queue,
    dev: Sock,
    peer: Sock,
    cfg: RxConfig,
    ctx: RxContext,
    counters: NetCounters,
}

impl<'a> Rx<'a> {
    fn new(mem: &'a GuestMemory, mergeable: bool, offload: bool) -> Self {
        let drv = Driver::new(mem, QSIZE, 0);
        let q = drv.queue();
        let (dev, peer) = socket_pair();
        let features = if offload { offload_features() } else { 0 };
        Self {
            mem,
            drv,
            q,
            dev,
            peer,
            cfg: RxConfig {
                mergeable,
                offloads: Offloads::to_guest(features),
            },
            ctx: RxContext::default(),
            counters: NetCounters::default(),
        }
    }

    fn run(&mut self) -> (RxState, bool) {
        process_rx(
            &mut self.q,
            self.mem,
            &mut self.dev,
            true,
            &self.cfg,
            &mut self.ctx,
            &mut self.counters,
        )
        .expect("queue error")
    }

    /// Offers a page-sized buffer at slot `i`, followed by a guard.
    fn page(&mut self, i: u64) -> u16 {
        let addr = BUFS + i * (PAGE + GUARD);
        guard(self.mem, addr, (PAGE + GUARD) as usize);
        self.drv.push(&[w(addr, PAGE as u32)])
    }

    fn page_data(&self, i: u64, len: usize) -> Vec<u8> {
        get(self.mem, BUFS + i * (PAGE + GUARD), len)
    }

    fn page_guard_intact(&self, i: u64) -> bool {
        guard_intact(self.mem, BUFS + i * (PAGE + GUARD) + PAGE, GUARD as usize)
    }
}

fn num_buffers(hdr: &[u8]) -> u16 {
    u16::from_le_bytes([hdr[10], hdr[11]])
}

#[test]
fn a_frame_lands_in_one_chain() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, false, false);
    let sent = with_header(0, 0, &frame(1514, 1));
    t.peer.send(&sent).unwrap();
    guard(&mem, BUFS, 0x2000);
    // Header and the frame's start in one descriptor, the rest in another.
    let head = t.drv.push(&[w(BUFS, 100), w(BUFS + 0x1000, 2000)]);
    let (state, notify) = t.run();
    assert_eq!(state, RxState::Idle);
    assert!(notify);
    assert_eq!(t.drv.last_used(head), 1526);
    let mut got = get(&mem, BUFS, 100);
    got.extend(get(&mem, BUFS + 0x1000, 1426));
    let mut expected = sent.clone();
    expected[10] = 1; // num_buffers
    assert_eq!(got, expected);
    assert!(guard_intact(&mem, BUFS + 100, 0x1000 - 100));
    assert!(guard_intact(&mem, BUFS + 0x1000 + 1426, 0x1000 - 1426));
    assert_eq!(t.counters.rx_frames, 1);
    assert_eq!(t.counters.rx_bytes, 1514);
}

#[test]
fn a_64k_frame_spreads_over_page_buffers() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, true);
    let data = frame(65000, 9);
    let sent = with_header(1, 1, &data); // NEEDS_CSUM, TCPv4
    t.peer.send(&sent).unwrap();
    for i in 0..20 {
        t.page(i);
    }
    t.run();
    let total = sent.len(); // 65012: 15 full pages and 3572 bytes
    let used = total.div_ceil(PAGE as usize);
    assert_eq!(used, 16);
    assert_eq!(t.drv.used_idx(), 16);
    let mut got = Vec::new();
    for i in 0..16u64 {
        let (id, len) = t.drv.used(i as u16);
        assert_eq!(id, i as u32);
        let expect = (total - (i * PAGE) as usize).min(PAGE as usize);
        assert_eq!(len as usize, expect);
        got.extend(t.page_data(i, expect));
        if i == 15 {
            assert!(guard_intact(
                &mem,
                BUFS + i * (PAGE + GUARD) + len as u64,
                600
            ));
        }
        assert!(t.page_guard_intact(i), "guard after buffer {i}");
    }
    assert_eq!(num_buffers(&got), 16);
    assert_eq!(got[..10], sent[..10]);
    assert_eq!(got[HDR_LEN..], sent[HDR_LEN..]);
    // The other four buffers were not touched.
    for i in 16..20 {
        assert!(guard_intact(&mem, BUFS + i * (PAGE + GUARD), PAGE as usize));
    }
}

#[test]
fn frames_wait_for_buffers_without_loss_or_duplicates() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, false);
    let frames: Vec<_> = (0..4)
        .map(|i| with_header(0, 0, &frame(1000 + i, i as u8)))
        .collect();
    for f in &frames {
        t.peer.send(f).unwrap();
    }
    assert_eq!(t.run(), (RxState::Deferred, false));
    assert!(t.ctx.has_staged());
    assert_eq!(t.drv.used_idx(), 0);
    // Deferred again on a kick without buffers.
    assert_eq!(t.run().0, RxState::Deferred);
    let mut got = Vec::new();
    let mut slot = 0;
    while got.len() < frames.len() {
        t.page(slot);
        let (_, notify) = t.run();
        assert!(notify);
        let (id, len) = t.drv.used(got.len() as u16);
        assert_eq!(id, slot as u32);
        got.push(t.page_data(slot, len as usize));
        slot += 1;
    }
    assert_eq!(
        t.run().0,
        RxState::Idle,
        "everything delivered, the socket is empty"
    );
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(num_buffers(g), 1);
        assert_eq!(g[HDR_LEN..], f[HDR_LEN..]);
    }
    assert_eq!(t.drv.used_idx(), 4);
    assert_eq!(t.counters.rx_frames, 4);
}

#[test]
fn a_frame_waits_for_enough_mergeable_buffers() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, true);
    let sent = with_header(0, 1, &frame(10000, 3)); // three pages
    t.peer.send(&sent).unwrap();
    t.page(0);
    t.page(1);
    assert_eq!(t.run().0, RxState::Deferred);
    assert_eq!(t.drv.used_idx(), 0, "held buffers are not completed early");
    t.page(2);
    assert_eq!(t.run().0, RxState::Idle);
    assert_eq!(t.drv.used_idx(), 3);
    let mut got = t.page_data(0, 4096);
    got.extend(t.page_data(1, 4096));
    got.extend(t.page_data(2, 10012 - 8192));
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(got[HDR_LEN..], sent[HDR_LEN..]);
}

#[test]
fn oversized_frames_are_dropped_not_truncated() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, false, false);
    guard(&mem, BUFS, 0x4000);
    let head = t.drv.push(&[w(BUFS, 1000)]);
    // Bigger than the buffer, then bigger than a guest without TSO accepts.
    t.peer.send(&with_header(0, 0, &frame(1400, 1))).unwrap();
    t.peer.send(&with_header(0, 0, &frame(1519, 2))).unwrap();
    let small = with_header(0, 0, &frame(500, 3));
    t.peer.send(&small).unwrap();
    t.run();
    assert_eq!(t.counters.rx_dropped, 2);
    // The buffer that was too small got the next frame that fits.
    assert_eq!(t.drv.used_idx(), 1);
    assert_eq!(t.drv.last_used(head), 512);
    assert_eq!(get(&mem, BUFS + 12, 500), small[12..]);
    assert!(guard_intact(&mem, BUFS + 512, 0x4000 - 512));
    // Without mergeable buffers, a frame bigger than one big chain is dropped too.
    let mut t = Rx::new(&mem, false, true);
    t.drv.push(&[w(BUFS, 4096)]);
    t.peer.send(&with_header(0, 1, &frame(5000, 4))).unwrap();
    t.run();
    assert_eq!(t.counters.rx_dropped, 1);
    assert_eq!(t.drv.used_idx(), 0);
}

#[test]
fn offloads_the_guest_refused_are_dropped_or_cleared() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, false);
    t.peer.send(&with_header(1, 0, &frame(100, 1))).unwrap(); // NEEDS_CSUM
    t.peer.send(&with_header(0, 4, &frame(100, 2))).unwrap(); // TCPv6
    t.peer.send(&with_header(2, 0, &frame(100, 3))).unwrap(); // DATA_VALID
    t.page(0);
    t.run();
    assert_eq!(t.counters.rx_dropped, 2);
    assert_eq!(t.drv.used_idx(), 1);
    assert_eq!(
        t.page_data(0, 2),
        [0, 0],
        "DATA_VALID cleared without GUEST_CSUM"
    );
}

#[test]
fn hostile_buffers_are_skipped() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, false);
    let sent = with_header(0, 0, &frame(200, 5));
    t.peer.send(&sent).unwrap();
    let bad: [&[Seg]; 6] = [
        &[r(BUFS, 4096)],                  // device-readable
        &[w(BUFS, 0)],                     // zero length
        &[w(BUFS, 11)],                    // smaller than a header
        &[w(OUTSIDE, 4096)],               // outside memory
        &[w(MEM_END - 100, 4096)],         // running off the end
        &[r(BUFS, 10), w(BUFS + 10, 500)], // readable then writable
    ];
    for segs in bad {
        t.drv.push(segs);
    }
    // A loop of writable descriptors: huge but legal; it gets the frame.
    let flags = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
    t.drv.set_desc(20, raw(BUFS + 0x8000, 16, flags, 20));
    t.drv.offer(20);
    t.run();
    assert_eq!(t.drv.used_idx(), 7);
    for n in 0..6 {
        assert_eq!(t.drv.used(n).1, 0);
    }
    assert_eq!(t.drv.used(6), (20, 212));
    assert_eq!(t.counters.rx_frames, 1);
}

#[test]
fn work_per_wakeup_is_bounded() {
    let mem = guest_memory();
    let mut t = Rx::new(&mem, true, false);
    // Runts are read and dropped; the budget still counts them.
    for _ in 0..BUDGET + 10 {
        t.peer.send(&[0u8; 20]).unwrap();
    }
    assert_eq!(t.run().0, RxState::Idle);
    assert_eq!(t.counters.rx_dropped, BUDGET as u64);
    t.run();
    assert_eq!(t.counters.rx_dropped, BUDGET as u64 + 10);
}

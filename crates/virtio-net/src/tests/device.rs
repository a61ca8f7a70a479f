//! The device through `VirtioDevice` and the event loop.

use std::sync::{Arc, Mutex};

use ember_virtio::testing::{get, put, r, w, Driver};
use ember_virtio::{ActivateError, Activation, GuestMemory, Interrupt, VirtioDevice};
use event_manager::{EventManager, EventSet, SubscriberOps};
use virtio_bindings::virtio_net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common::*;
use crate::{Net, NetConfig, NetSubscriber, HDR_LEN, RX_QUEUE, TX_QUEUE};

const QSIZE: u16 = 32;
const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
/// The second queue's rings (the mock `Driver` owns address 0).
const RING: u64 = 0x8000;

fn net(offload: bool) -> (Net<Sock>, Sock) {
    let (dev, peer) = socket_pair();
    let net = Net::with_backend(dev, NetConfig { mac: MAC, offload }).unwrap();
    (net, peer)
}

fn activation(mem: &GuestMemory, queues: Vec<ember_virtio::Queue>, features: u64) -> Activation {
    Activation {
        mem: mem.clone(),
        queues,
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        features,
    }
}

#[test]
fn features_and_config_space() {
    let bit = |b: u32| 1u64 << b;
    let (plain, _) = net(false);
    let f = plain.features();
    for b in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & bit(b), 0);
    }
    assert_eq!(f & offload_features(), 0);
    assert_ne!(f & ember_virtio::VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & ember_virtio::VIRTIO_RING_F_INDIRECT_DESC, 0);
    assert_eq!(plain.device_type(), 1);
    assert_eq!(plain.queue_max_sizes(), &[256, 256]);
    let mut cfg = [0xffu8; 12];
    plain.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1, 0, 1, 0, 0, 0]);
    let (off, _) = net(true);
    let f = off.features();
    assert_eq!(f & offload_features(), offload_features());
    // Dependencies the spec requires of the offered set.
    assert_ne!(f & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
    assert_ne!(f & bit(VIRTIO_NET_F_CSUM), 0);
    assert_eq!(f & bit(VIRTIO_NET_F_GUEST_UFO), 0);
    assert_eq!(f & bit(VIRTIO_NET_F_CTRL_VQ), 0);
}

#[test]
fn activation_needs_two_ready_queues() {
    let mem = guest_memory();
    let (mut n, _) = net(false);
    let drv = Driver::new(&mem, QSIZE, 0);
    let err = n
        .activate(activation(&mem, vec![drv.queue()], 0))
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
    let mut idle = drv.queue();
    ember_virtio::QueueT::set_ready(&mut idle, false);
    let err = n.activate(activation(&mem, vec![drv.queue(), idle], 0));
    assert!(matches!(err, Err(ActivateError::Device(_))));
    assert!(n.tap_interest().is_empty());
}

#[test]
fn the_event_loop_stops_reading_while_the_guest_has_no_buffers() {
    let mem = guest_memory();
    let (n, peer) = net(false);
    let n = Arc::new(Mutex::new(n));
    let mut em = EventManager::<NetSubscriber<Sock>>::new().unwrap();
    em.add_subscriber(NetSubscriber(n.clone()));
    let kick = |q: usize| n.lock().unwrap().queue_events()[q].write(1).unwrap();

    // Before activation, kicks are drained and ignored and the tap is not watched.
    peer.send(&with_header(0, 0, &frame(100, 1))).unwrap();
    kick(RX_QUEUE);
    assert_eq!(em.run_with_timeout(0).unwrap(), 1);
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);

    let mut rx = Driver::new(&mem, QSIZE, 0);
    let mut tx = Ring::new(&mem, RING, QSIZE);
    let features = 1 << VIRTIO_NET_F_MRG_RXBUF;
    let act = activation(&mem, vec![rx.queue(), tx.queue()], features);
    let irq = act.interrupt.clone();
    n.lock().unwrap().activate(act).unwrap();
    kick(RX_QUEUE);
    kick(TX_QUEUE);
    em.run_with_timeout(0).unwrap();
    // The frame is staged, no buffer yet: the readable socket must not wake the loop.
    assert!(n.lock().unwrap().tap_interest().is_empty());
    peer.send(&with_header(0, 0, &frame(200, 2))).unwrap();
    assert_eq!(em.run_with_timeout(50).unwrap(), 0, "no spinning");

    // Buffers arrive: both frames are delivered, and the tap is watched again.
    for i in 0..2u64 {
        rx.push(&[w(BUFS + i * 0x1000, 0x1000)]);
    }
    kick(RX_QUEUE);
    for _ in 0..4 {
        em.run_with_timeout(0).unwrap();
    }
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(rx.used(0).1, 112);
    assert_eq!(rx.used(1).1, 212);
    assert_eq!(
        get(&mem, BUFS + 0x1000 + HDR_LEN as u64, 200),
        frame(200, 2)
    );
    assert_eq!(n.lock().unwrap().tap_interest(), EventSet::IN);
    assert!(irq.irqfd().read().unwrap() > 0);

    // A frame from the guest goes out.
    let out = with_header(0, 0, &frame(60, 3));
    put(&mem, BUFS + 0x4000, &out);
    tx.push(&[(BUFS + 0x4000, 72, false)]);
    kick(TX_QUEUE);
    em.run_with_timeout(0).unwrap();
    assert_eq!(peer.recv_all(), vec![out]);
    assert_eq!(tx.used_idx(), 1);
    let c = n.lock().unwrap().counters();
    assert_eq!(
        (c.rx_frames, c.tx_frames, c.rx_bytes, c.tx_bytes),
        (2, 1, 300, 60)
    );
}

#[test]
fn blocked_tx_resumes_when_the_host_drains() {
    let mem = guest_memory();
    let (n, peer) = net(false);
    n.backend().set_sndbuf(4096);
    let n = Arc::new(Mutex::new(n));
    let mut em = EventManager::<NetSubscriber<Sock>>::new().unwrap();
    em.add_subscriber(NetSubscriber(n.clone()));
    let rx = Ring::new(&mem, RING, QSIZE);
    let mut tx = Driver::new(&mem, QSIZE, 0);
    n.lock()
        .unwrap()
        .activate(activation(&mem, vec![rx.queue(), tx.queue()], 0))
        .unwrap();
    let filler = [0xeeu8; 1000];
    while n.lock().unwrap().backend().send(&filler).is_ok() {}
    let out = with_header(0, 0, &frame(1000, 4));
    put(&mem, BUFS, &out);
    for _ in 0..4 {
        tx.push(&[r(BUFS, 1012)]);
    }
    n.lock().unwrap().queue_events()[TX_QUEUE].write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert_eq!(tx.used_idx(), 0);
    assert!(n.lock().unwrap().tap_interest().contains(EventSet::OUT));
    let mut got = 0;
    for _ in 0..100 {
        got += peer.recv_all().iter().filter(|m| m[..] == out[..]).count();
        if tx.used_idx() == 4 {
            break;
        }
        em.run_with_timeout(10).unwrap();
    }
    got += peer.recv_all().iter().filter(|m| m[..] == out[..]).count();
    assert_eq!((tx.used_idx(), got), (4, 4));
    assert!(!n.lock().unwrap().tap_interest().contains(EventSet::OUT));
}

#[test]
fn an_impossible_avail_index_breaks_the_device_until_reset() {
    let mem = guest_memory();
    let (mut n, peer) = net(false);
    let rx = Ring::new(&mem, RING, QSIZE);
    let mut tx = Driver::new(&mem, QSIZE, 0);
    n.activate(activation(&mem, vec![rx.queue(), tx.queue()], 0))
        .unwrap();
    tx.set_avail_idx(QSIZE + 5);
    n.handle_tx_queue();
    assert!(n.tap_interest().is_empty());
    tx.set_avail_idx(1);
    n.handle_tx_queue();
    assert_eq!(tx.used_idx(), 0, "nothing served while broken");
    n.reset();
    assert!(n.tap_interest().is_empty());
    let mut tx = Driver::new(&mem, QSIZE, 0);
    n.activate(activation(&mem, vec![rx.queue(), tx.queue()], 0))
        .unwrap();
    let out = with_header(0, 0, &frame(60, 5));
    put(&mem, BUFS, &out);
    tx.push(&[r(BUFS, 72)]);
    n.handle_tx_queue();
    assert_eq!(tx.used_idx(), 1);
    assert_eq!(peer.recv_all(), vec![out]);
    assert_eq!(n.tap_interest(), EventSet::IN);
}

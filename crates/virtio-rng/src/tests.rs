//! Queue-level tests: chains built with virtio-queue's mock driver, served by `process_queue`
//! or by `Rng` through activation and `handle_queue`.

use std::sync::Arc;

use ember_virtio::testing::{get, put, r, raw, w, Driver, Seg};
use ember_virtio::{ActivateError, Activation, GuestMemory, Interrupt, QueueHandler, VirtioDevice};
use ember_virtio::{Queue, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::request::{process_queue, RequestContext, MAX_BYTES_PER_REQUEST};
use crate::Rng;

const QSIZE: u16 = 16;
const MEM_END: u64 = 0x10_0000;
const OUTSIDE: u64 = 0x4000_0000;
const BUF: u64 = 0x1_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const MAX: usize = MAX_BYTES_PER_REQUEST;

fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Offers each chain in turn, serving the queue after each; returns the used lengths.
fn serve(mem: &GuestMemory, chains: &[&[Seg]]) -> Vec<u32> {
    let mut drv = Driver::new(mem, QSIZE, 0);
    let mut q = drv.queue();
    let mut ctx = RequestContext::default();
    let mut used = Vec::new();
    for segs in chains {
        let head = drv.push(segs);
        assert!(process_queue(&mut q, mem, &mut ctx).unwrap());
        used.push(drv.last_used(head));
    }
    used
}

#[test]
fn fills_writable_buffers_with_fresh_random_bytes() {
    let mem = guest_memory();
    let (a, b, c, d) = (BUF, BUF + 0x1000, BUF + 0x2000, BUF + 0x3000);
    put(&mem, BUF + 0x4000, &[0x33; 16]);
    let first: &[Seg] = &[
        r(BUF + 0x4000, 16),
        w(a, 64),
        w(b, 100),
        w(OUTSIDE, 0),
        w(c, 36),
    ];
    assert_eq!(serve(&mem, &[first, &[w(d, 200)]]), [200, 200]);
    let got = [get(&mem, a, 64), get(&mem, b, 100), get(&mem, c, 36)].concat();
    assert!(!zeros(&got));
    assert_ne!(got, get(&mem, d, 200), "two requests got the same bytes");
    // Nothing outside the buffers, and nothing in the readable one.
    assert!(zeros(&get(&mem, a + 64, 64)) && zeros(&get(&mem, b + 100, 64)));
    assert!(zeros(&get(&mem, c + 36, 64)) && zeros(&get(&mem, d + 200, 64)));
    assert_eq!(get(&mem, BUF + 0x4000, 16), [0x33; 16]);
}

#[test]
fn caps_each_request() {
    let mem = guest_memory();
    let (a, b, c) = (BUF, BUF + 0x1_0000, BUF + 0x2_0000);
    let chains: [&[Seg]; 2] = [&[w(a, 40_000), w(b, 40_000)], &[w(c, 0x2_0000)]];
    assert_eq!(serve(&mem, &chains), [MAX as u32; 2]);
    let rest = MAX - 40_000;
    assert!(!zeros(&get(&mem, b + rest as u64 - 64, 64)));
    assert!(zeros(&get(&mem, b + rest as u64, 40_000 - rest)));
    assert!(!zeros(&get(&mem, c + MAX as u64 - 64, 64)));
    assert!(zeros(&get(&mem, c + MAX as u64, 0x2_0000 - MAX)));
}

#[test]
fn chains_without_writable_room_get_nothing() {
    let mem = guest_memory();
    put(&mem, BUF, &[0x44; 64]);
    #[rustfmt::skip]
    let chains: &[&[Seg]] = &[
        &[r(BUF, 64)],
        &[r(BUF, 16), w(OUTSIDE, 0)],
        &[w(BUF, 16), r(BUF + 32, 16)], // readable after writable
    ];
    assert_eq!(serve(&mem, chains), [0, 0, 0]);
    assert_eq!(get(&mem, BUF, 64), [0x44; 64]);
}

#[test]
fn buffers_outside_memory_do_not_panic() {
    let mem = guest_memory();
    #[rustfmt::skip]
    let chains: &[&[Seg]] = &[
        &[w(BUF, 8), w(MEM_END - 4, 16), w(BUF + 64, 8)], // stops at the bad buffer
        &[w(OUTSIDE, 64)],
        &[w(u64::MAX - 8, 64)],
        &[w(u64::MAX, u32::MAX), w(BUF, 16)],
    ];
    assert_eq!(serve(&mem, chains), [8, 0, 0, 0]);
    assert!(zeros(&get(&mem, BUF + 64, 8)));
}

#[test]
fn looping_chain_terminates() {
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, QSIZE, 0);
    let mut q = drv.queue();
    let mut ctx = RequestContext::default();
    // 0 -> 0 -> ...: the chain walk stops after a queue's worth of descriptors.
    drv.set_desc(0, raw(BUF, 8, WRITE | NEXT, 0));
    // 1 -> (200): stops there.
    drv.set_desc(1, raw(BUF + 64, 8, WRITE | NEXT, 200));
    drv.offer(0);
    drv.offer(1);
    assert!(process_queue(&mut q, &mem, &mut ctx).unwrap());
    assert_eq!(drv.used_idx(), 2);
    assert_eq!([drv.used(0).1, drv.used(1).1], [u32::from(QSIZE) * 8, 8]);
}

fn activate(
    dev: &mut Rng,
    mem: &GuestMemory,
    queues: Vec<Queue>,
) -> Result<Arc<Interrupt>, ActivateError> {
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let (mem, interrupt, features) = (mem.clone(), irq.clone(), dev.features());
    dev.activate(Activation {
        mem,
        queues,
        interrupt,
        features,
    })?;
    Ok(irq)
}

#[test]
fn rng_device_serves_signals_and_survives_a_broken_queue() {
    let mem = guest_memory();
    let mut dev = Rng::new().unwrap();
    assert_eq!(dev.device_type(), 4);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    let mut config = [0xffu8; 8];
    dev.read_config(0, &mut config);
    assert_eq!(config, [0; 8]);
    dev.handle_queue(0); // not active yet: nothing happens
    let mut drv = Driver::new(&mem, QSIZE, 0);
    assert!(activate(&mut dev, &mem, vec![]).is_err());
    assert!(activate(&mut dev, &mem, vec![drv.queue(), drv.queue()]).is_err());

    let irq = activate(&mut dev, &mem, vec![drv.queue()]).unwrap();
    let head = drv.push(&[w(BUF, 32)]);
    dev.handle_queue(0);
    assert_eq!(irq.irqfd().read().unwrap(), 1);
    assert_eq!(drv.last_used(head), 32);

    // An avail index more than a queue ahead breaks the queue until reset.
    drv.set_avail_idx(1 + QSIZE + 1);
    dev.handle_queue(0);
    drv.set_avail_idx(1);
    drv.push(&[w(BUF, 32)]);
    dev.handle_queue(0);
    assert!(irq.irqfd().read().is_err());
    assert_eq!(drv.used_idx(), 1);

    dev.reset();
    let mut drv = Driver::new(&mem, QSIZE, 0);
    let irq = activate(&mut dev, &mem, vec![drv.queue()]).unwrap();
    let head = drv.push(&[w(BUF, 16)]);
    dev.handle_queue(0);
    assert_eq!(irq.irqfd().read().unwrap(), 1);
    assert_eq!(drv.last_used(head), 16);
}

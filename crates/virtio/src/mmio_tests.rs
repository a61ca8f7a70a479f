use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::{read_config_bytes, ActivateError, Activation};

const OFFERED: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 0b101;

struct Dummy {
    evts: Vec<EventFd>,
    activated: Option<Activation>,
    resets: usize,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        if o + data.len() <= self.config.len() {
            self.config[o..o + data.len()].copy_from_slice(data);
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: a.queues.len(),
            });
        }
        self.activated = Some(a);
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Dummy {
        evts: (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        activated: None,
        resets: 0,
        config: [1, 2, 3, 4, 5, 6, 7, 8],
    }));
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(dev.clone(), mem, irq).unwrap();
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

const ACK_DRIVER: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(t, VIRTIO_MMIO_STATUS, ACK_DRIVER);
    for sel in 0..2 {
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        wr(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * sel)) as u32,
        );
    }
    wr(
        t,
        VIRTIO_MMIO_STATUS,
        ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
}

/// Sets up queue `index` with its rings at `base`.
fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    wr(t, VIRTIO_MMIO_QUEUE_SEL, index);
    wr(t, VIRTIO_MMIO_QUEUE_NUM, size);
    wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
    wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (base >> 32) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (base >> 32) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x2000) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (base >> 32) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

const DRIVER_OK: u32 = ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = setup();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        (OFFERED >> 32) as u32
    );
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), OFFERED as u32);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    let mut b = [0u8; 2];
    t.read(0x100 + 6, &mut b);
    assert_eq!(b, [7, 8]);
    t.read(0x100 + 7, &mut b);
    assert_eq!(b, [8, 0]);
    // Registers only answer aligned 32-bit accesses.
    let mut one = [0xffu8; 1];
    t.read(0, &mut one);
    assert_eq!(one, [0]);
}

#[test]
fn full_handshake_activates_with_event_idx_and_kicks_queues() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS),
        ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
    );
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 8, 0x2_0000 - 0x1000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
    assert!(t.is_activated());
    let d = dev.lock().unwrap();
    let a = d.activated.as_ref().unwrap();
    assert!(a.queues[0].event_idx_enabled());
    assert_eq!(a.queues[0].size(), 16);
    assert_eq!(a.queues[1].desc_table(), 0x1_f000);
    assert_eq!(a.features, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    // Activation kicks every queue once.
    assert_eq!(d.evts[0].read().unwrap(), 1);
    assert_eq!(d.evts[1].read().unwrap(), 1);
}

#[test]
fn refuses_unoffered_features_and_legacy_drivers() {
    for bad in [VIRTIO_F_VERSION_1 | (1 << 40), 0b1] {
        let (mut t, _) = setup();
        negotiate(&mut t, bad);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK_DRIVER, "{bad:#x}");
        wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        assert!(!t.is_activated());
    }
}

#[test]
fn out_of_phase_writes_are_ignored() {
    let (mut t, dev) = setup();
    // Queue setup before FEATURES_OK does nothing.
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK_DRIVER);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // DRIVER_OK without FEATURES_OK does nothing.
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(!t.is_activated());
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    // Bad sizes are refused and leave the queue as it was.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 12);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 0x10000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
    wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
    assert!(t.is_activated());
    assert_eq!(
        dev.lock().unwrap().activated.as_ref().unwrap().queues[0].size(),
        16
    );
    // Feature writes after FEATURES_OK do nothing; clearing status bits does nothing.
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK_DRIVER);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRIVER_OK);
}

#[test]
fn queue_outside_guest_memory_needs_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0xffff_0000_0000);
    wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
    assert!(!t.is_activated());
    assert!(dev.lock().unwrap().activated.is_none());
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    // A reset recovers the device.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn notify_interrupt_ack_and_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
    let d = dev.lock().unwrap();
    let _ = d.evts[0].read();
    let _ = d.evts[1].read();
    let irq = d.activated.as_ref().unwrap().interrupt.clone();
    drop(d);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 99);
    assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 1);
    irq.signal_used_queue();
    assert_eq!(irq.irqfd().read().unwrap(), 1);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(dev.lock().unwrap().resets, 1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
}

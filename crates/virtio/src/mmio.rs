//! The virtio-mmio transport, virtio 1.x ("modern", register layout version 2).
//!
//! Registers are 32-bit and live at the start of the window; device configuration space
//! starts at 0x100. The transport enforces the driver's status sequence (ACKNOWLEDGE, DRIVER,
//! FEATURES_OK, DRIVER_OK): features and queues can only be set up in the phase the spec
//! allows, `FEATURES_OK` is refused for features the device does not offer or without
//! `VIRTIO_F_VERSION_1`, and `DRIVER_OK` validates every queue against guest memory before the
//! device sees it. A driver that breaks the rules gets its write ignored (and the device
//! marked `NEEDS_RESET` when activation fails), never a VMM crash.

use std::sync::{Arc, Mutex, MutexGuard};

use ember_devices::BusDevice;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::{
    warn_limited, Activation, GuestMemory, Interrupt, LogLimiter, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of `QueueNotify` in the window, where the VMM places the queue ioeventfds (with the
/// queue index as datamatch).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5245_4d45; // "EMER"
const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;

/// A device behind a virtio-mmio register window. Lives on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    limiter: LogLimiter,
}

/// A queue could not be created for the size the device asked for.
#[derive(Debug, thiserror::Error)]
#[error("device queue {index} has an invalid maximum size {size} (must be a power of two, at most 32768)")]
pub struct InvalidQueueSize {
    /// Queue index.
    pub index: usize,
    /// Size the device asked for.
    pub size: u16,
}

impl MmioTransport {
    /// Puts `device` behind a register window. `interrupt` must be wired to the device's GSI.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, std::io::Error> {
        let (queues, queue_evts) = {
            let dev = lock(&device);
            let queues = new_queues(dev.queue_max_sizes()).map_err(std::io::Error::other)?;
            let evts = dev
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()?;
            (queues, evts)
        };
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            limiter: LogLimiter::default(),
        })
    }

    /// The device status register, for tests and diagnostics.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Features may be negotiated after DRIVER and before FEATURES_OK.
    fn negotiating(&self) -> bool {
        self.has_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
            && !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.has_status(VIRTIO_CONFIG_S_FAILED)
    }

    /// Queues may be set up after FEATURES_OK and before DRIVER_OK.
    fn configuring_queues(&self) -> bool {
        self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK)
            && !self.has_status(VIRTIO_CONFIG_S_FAILED)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device().device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device().features() as u32,
                1 => (self.device().features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as all ones.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES if self.negotiating() => match self.driver_features_sel {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            // Drivers disable queues while tearing down, after the reset; harmless.
            VIRTIO_MMIO_QUEUE_READY if value == 0 && !self.activated => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(false);
                }
            }
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if self.configuring_queues() =>
            {
                self.write_queue_register(offset as u32, value)
            }
            _ => warn_limited!(
                self.limiter,
                "virtio-mmio: ignored write of {value:#x} to register {offset:#x} in status {:#x}",
                self.status
            ),
        }
    }

    fn write_queue_register(&mut self, reg: u32, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        let result = match reg {
            VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            VIRTIO_MMIO_QUEUE_READY => {
                queue.set_ready(value == 1);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                queue.try_set_desc_table_address(GuestAddress(low(queue.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                queue.try_set_desc_table_address(GuestAddress(high(queue.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                queue.try_set_avail_ring_address(GuestAddress(low(queue.avail_ring())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                queue.try_set_avail_ring_address(GuestAddress(high(queue.avail_ring())))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                queue.try_set_used_ring_address(GuestAddress(low(queue.used_ring())))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                queue.try_set_used_ring_address(GuestAddress(high(queue.used_ring())))
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn_limited!(self.limiter, "virtio-mmio: queue {}: {e}", self.queue_sel);
        }
    }

    /// `QueueNotify` reaches here only when no ioeventfd is registered for it.
    fn notify(&mut self, index: u32) {
        if let Some(evt) = self.queue_evts.get(index as usize) {
            if let Err(e) = evt.write(1) {
                log::error!("virtio-mmio: cannot signal queue {index}: {e}");
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, one phase at a time; clearing any bit other than by a full
        // reset is a driver error we ignore.
        if value & self.status != self.status {
            warn_limited!(
                self.limiter,
                "virtio-mmio: status {value:#x} clears bits of {:#x}",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK unset tells the driver the features were refused.
            self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
            return;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK) {
                warn_limited!(self.limiter, "virtio-mmio: DRIVER_OK before FEATURES_OK");
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&mut self) -> bool {
        let offered = self.device().features();
        let ok =
            self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
        if !ok {
            warn_limited!(
                self.limiter,
                "virtio-mmio: refused features {:#x} (offered {offered:#x})",
                self.driver_features
            );
        }
        ok
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, config) in self.queues.iter().enumerate() {
            let Ok(mut q) = Queue::try_from(config.state()) else {
                self.fail(&format!("queue {i} is misconfigured"));
                return;
            };
            q.set_event_idx(event_idx);
            // Queues the driver left disabled stay disabled; enabled ones must fit in memory.
            if q.ready() && !q.is_valid(&self.mem) {
                self.fail(&format!("queue {i} does not fit in guest memory"));
                return;
            }
            queues.push(q);
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        let result = self.device().activate(activation);
        match result {
            Ok(()) => {
                self.activated = true;
                // Buffers made available before activation were notified to nobody.
                for i in 0..self.queue_evts.len() {
                    self.notify(i as u32);
                }
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, why: &str) {
        warn_limited!(
            self.limiter,
            "virtio-mmio: cannot activate the device: {why}"
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }
}

fn new_queues(sizes: &[u16]) -> Result<Vec<Queue>, InvalidQueueSize> {
    sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| Queue::new(size).map_err(|_| InvalidQueueSize { index, size }))
        .collect()
}

fn lock(dev: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_START {
            self.device().read_config(offset - CONFIG_START, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!(
                self.limiter,
                "virtio-mmio: {}-byte read at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_START {
            if self.has_status(VIRTIO_CONFIG_S_FAILED) {
                return;
            }
            self.device().write_config(offset - CONFIG_START, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_limited!(
                self.limiter,
                "virtio-mmio: {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn_limited!(self.limiter, "virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;

//! The interface between the transport and a device.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::{GuestMemory, Interrupt};

/// What a device gets when the driver sets `DRIVER_OK`: everything it needs to serve its
/// queues from then on.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues as the driver configured them, validated against `mem`, in index order.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured fewer queues than the device needs.
    #[error("expected {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Needed.
        expected: usize,
        /// Configured.
        got: usize,
    },
    /// Anything device-specific.
    #[error("{0}")]
    Device(String),
}

/// A virtio device, as the transport sees it. Implementations keep their request processing
/// (queue logic) in plain functions and their event-loop glue in a separate
/// `event_manager::MutEventSubscriber` impl that watches [`VirtioDevice::queue_events`].
pub trait VirtioDevice: Send {
    /// Virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers, including transport bits such as `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; ignored by devices without writable fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// One eventfd per queue, signalled when the driver notifies that queue. The VMM registers
    /// them as KVM ioeventfds; the device's event handler watches them from the start and
    /// ignores them until activation.
    fn queue_events(&self) -> &[EventFd];
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Drops all queue state: the driver reset the device. Backends (files, sockets) stay open.
    fn reset(&mut self);
}

/// Copies `config[offset..]` into `data`, zero-filling whatever lies past the end. A helper
/// for [`VirtioDevice::read_config`] implementations.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

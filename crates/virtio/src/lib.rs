//! Ember's virtio device model: the [`VirtioDevice`] interface every device crate implements,
//! the virtio-mmio transport ([`MmioTransport`]) that exposes a device to the guest, the
//! [`Interrupt`] a device raises, and a rate limiter for log lines a guest can provoke.
//!
//! The data path never goes through the vCPU exit loop: queue notifications arrive on eventfds
//! (KVM ioeventfds on the `QueueNotify` register) that the device's event-loop handler
//! watches, and interrupts leave through an irqfd.

mod active;
pub mod chain;
mod device;
mod drain;
mod events;
mod interrupt;
mod mmio;
mod ratelimit;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod used;

pub use active::ActiveQueue;
pub use device::{read_config_bytes, ActivateError, Activation, VirtioDevice};
pub use drain::drain_queue;
pub use events::{QueueHandler, QueueSubscriber};
pub use interrupt::Interrupt;
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
pub use ratelimit::LogLimiter;
pub use used::{add_used_batch, UsedNotifier};
pub use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// The guest memory type devices work on.
pub type GuestMemory = ember_memory::GuestRam;

/// Feature bit: the device follows virtio 1.x (always offered and required).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: used/available event indexes (interrupt and notification suppression).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Feature bit: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

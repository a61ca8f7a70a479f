//! virtio-blk for Ember: a raw image file as a guest block device.
//!
//! - [`disk`]: the host file (open, lock, capacity, vectored I/O into guest memory).
//! - [`request`]: the queue logic, from descriptor chain to completed request.
//! - [`device`]: the [`ember_virtio::VirtioDevice`] face (features, config space,
//!   activation) and the event-loop glue ([`ember_virtio::QueueHandler`]).

pub mod device;
pub mod disk;
pub mod request;

pub use device::Block;
pub use disk::{DiskError, DiskFile};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

#[cfg(test)]
mod tests;

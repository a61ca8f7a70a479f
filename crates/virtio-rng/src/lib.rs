//! virtio-rng for Ember: the guest's `/dev/hwrng`, filled from the host's `getrandom(2)`.
//!
//! - [`request`]: the queue logic (fill each chain's writable buffers).
//! - [`device`]: the [`ember_virtio::VirtioDevice`] face and the event-loop glue.

pub mod device;
pub mod request;

pub use device::Rng;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

#[cfg(test)]
mod tests;

//! virtio-net for Ember: a guest NIC backed by an existing host tap device.
//!
//! - [`tap`]: attaching to the tap (`TUNSETIFF` with a 12-byte virtio-net header).
//! - [`backend`]: the [`Backend`] trait the queue logic does its frame I/O through, so tests
//!   can use a `SOCK_SEQPACKET` socket pair instead of a tap.
//! - [`header`]: the virtio-net header and which offloads each direction negotiated.
//! - [`tx`] and [`rx`]: the queue logic, plain functions from descriptor chains to frames
//!   and back, with no event-loop code. TX gathers the guest's buffers straight into a
//!   `writev`; RX reads one frame into a staging buffer and copies it into as many guest
//!   buffers as it needs (`VIRTIO_NET_F_MRG_RXBUF`).
//! - [`device`]: [`Net`], the [`ember_virtio::VirtioDevice`] face (features, config space,
//!   activation, reset), and which tap events it needs ([`Net::tap_interest`]).
//! - [`subscriber`]: [`NetSubscriber`], the event-loop glue: queue eventfds plus the tap fd,
//!   whose epoll interest follows what the device can make progress on (the loop is
//!   level-triggered, so watching a readable tap with no guest buffers would spin).
//!
//! There is one RX and one TX queue, no control queue. With VERSION_1 the header is always
//! the 12-byte `virtio_net_hdr_v1`, which is also what the tap is told to use, so headers
//! pass through after validation against the negotiated offloads.

pub mod backend;
pub mod device;
pub mod header;
mod mac;
pub mod rx;
pub mod subscriber;
pub mod tap;
pub mod tx;

pub use backend::Backend;
pub use device::{Net, NetConfig, NetCounters};
pub use mac::{format_mac, parse_mac, random_mac, MacError};
pub use subscriber::NetSubscriber;
pub use tap::{Tap, TapError};

/// Queue size offered to the driver, for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), in front of every frame.
pub const HDR_LEN: usize = 12;
/// An Ethernet header; no frame is shorter.
pub const ETH_HLEN: usize = 14;
/// Largest frame (without the virtio-net header) in either direction: a 64 KiB TSO/GSO
/// frame plus its link-layer headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Largest frame delivered to a guest that did not accept TSO: a 1500-byte MTU plus an
/// Ethernet header and one VLAN tag.
pub const MTU_FRAME_LEN: usize = 1518;
/// Frames moved per direction and wakeup before yielding to the rest of the event loop.
pub const BUDGET: usize = 64;

/// Every `TUN_F_*` offload Ember can use.
pub const TUN_OFFLOADS: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

#[cfg(test)]
mod tests;

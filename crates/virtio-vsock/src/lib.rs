//! virtio-vsock for Ember: guest `AF_VSOCK` stream sockets bridged to Unix sockets on the
//! host, speaking Firecracker's host-side protocol so existing clients work unchanged.
//!
//! # Host protocol
//!
//! - **Host to guest.** A host process connects to the device's Unix socket (`uds_path`) and
//!   writes `CONNECT <port>\n`. The device picks a host port (counting up from 2^30), sends
//!   the guest `OP_REQUEST` from (CID 2, that port) to (guest CID, `<port>`), and when the
//!   guest answers `OP_RESPONSE` writes `OK <host port>\n` to the host socket. If the guest
//!   refuses (`OP_RST`), the line is malformed, or nothing happens within
//!   [`CONNECT_TIMEOUT`], the host socket is closed without a reply. Bytes the client sends
//!   after its newline are the start of the stream.
//! - **Guest to host.** A guest connect to (CID 2, port P) becomes a connect to the Unix
//!   socket `<uds_path>_P`; `OP_RESPONSE` if it succeeds, `OP_RST` otherwise. Connects to
//!   any other CID are refused.
//!
//! After that both sides are plain byte streams; half-closes map to `shutdown(2)` and
//! `OP_SHUTDOWN`, and a connection ends with `OP_RST`.
//!
//! # Structure
//!
//! - `packet`: the packet header by value (chains are parsed by the `virtio-vsock` crate).
//! - `conn`: one connection's state machine: credit in both directions (the guest never
//!   gets more bytes than its `buf_alloc` allows, and may have at most [`BUF_ALLOC`] bytes
//!   in flight towards the host), the buffer of guest bytes the host socket has not taken,
//!   and half-close state.
//! - `muxer`, `rx`, `host`: all connections of a device keyed by (host port, guest port),
//!   the control packets waiting for RX buffers, round-robin reading of host data straight
//!   into RX buffers, the listener and `CONNECT` lines, and setup timeouts. The muxer knows
//!   nothing of the event loop: it records which readiness each host socket should be
//!   watched for and hands the changes out as `FdOp`s.
//! - `queues`: the TX and RX queue loops. The event queue's buffers are held, unused.
//! - [`device`]: [`Vsock`], the [`ember_virtio::VirtioDevice`] face.
//! - [`event`]: [`VsockSubscriber`], the event-loop glue.

pub mod device;
pub mod event;
pub mod packet;

mod conn;
mod host;
mod muxer;
mod queues;
mod rx;

use std::time::Duration;

pub use device::{Vsock, VsockError};
pub use event::VsockSubscriber;

/// Size of each queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Number of queues: RX, TX, event.
pub const NUM_QUEUES: usize = 3;
/// Index of the RX queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the TX queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;

/// The receive buffer each connection advertises to the guest: guest bytes the host socket
/// has not taken yet are kept up to this size.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest packet payload accepted from or sent to the guest.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Connections per device.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host clients accepted but still writing their `CONNECT` line.
pub const MAX_PENDING_ACCEPTS: usize = 64;
/// Control packets waiting for RX buffers.
pub const MAX_CTRL: usize = 4 * MAX_CONNECTIONS;
/// Time a host client has to send its `CONNECT` line, and the guest to answer the request.
/// Generous (Firecracker allows 2 s for the answer): on a loaded host the VMM thread or the
/// guest can be descheduled for seconds, and a slot held longer costs only a socket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `CONNECT` line, newline excluded.
pub const MAX_CONNECT_LINE: usize = 32;
/// First host port handed to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

#[cfg(test)]
mod tests;

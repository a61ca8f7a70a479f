//! Tests: queue logic against a `SOCK_SEQPACKET` socket pair standing in for the tap
//! (`tx`, `rx`), the device and its event-loop glue (`device`), MAC helpers and a real tap
//! (`tap`).

mod common;
mod device;
mod rx;
mod tap;
mod tx;

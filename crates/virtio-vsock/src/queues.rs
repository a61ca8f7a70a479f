//! The queue logic: TX chains parsed and handed to the muxer, RX chains filled by it. Both
//! bound the chains served per call and say whether more work remains.

use ember_virtio::{warn_limited, GuestMemory, LogLimiter, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;

use crate::muxer::Muxer;
use crate::packet::Header;
use crate::MAX_PKT_DATA;

/// TX chains served per call.
pub const TX_BUDGET: usize = 256;
/// RX chains filled per call.
pub const RX_BUDGET: usize = 256;

/// What serving a queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The driver must be interrupted.
    pub notify: bool,
    /// The budget ran out with work left.
    pub more: bool,
}

/// Serves the TX queue: every packet goes to the muxer, every chain is completed with
/// length 0, malformed ones with a rate-limited warning.
pub fn serve_tx(
    queue: &mut Queue,
    mem: &GuestMemory,
    muxer: &mut Muxer,
    limiter: &mut LogLimiter,
) -> Result<Served, virtio_queue::Error> {
    let mut used = false;
    let mut budget = TX_BUDGET;
    let more = 'outer: loop {
        queue.disable_notification(mem)?;
        while let Some(mut chain) = queue.iter(mem)?.next() {
            if budget == 0 {
                queue.go_to_previous_position();
                break 'outer true;
            }
            budget -= 1;
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::of(&pkt);
                    if hdr.src_cid == muxer.guest_cid {
                        muxer.on_guest_packet(&hdr, pkt.data_slice());
                    } else {
                        warn_limited!(
                            limiter,
                            "virtio-vsock: dropping a tx packet from CID {} (the guest is {})",
                            hdr.src_cid,
                            muxer.guest_cid
                        );
                    }
                }
                Err(e) => {
                    warn_limited!(limiter, "virtio-vsock: dropping a malformed tx packet: {e}")
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            break false;
        }
    };
    Ok(Served {
        notify: used && queue.needs_notification(mem)?,
        more,
    })
}

/// Fills RX chains with what the muxer has to send. When the buffers run out with work left,
/// notifications are re-enabled so the driver's next buffer wakes the device.
pub fn serve_rx(
    queue: &mut Queue,
    mem: &GuestMemory,
    muxer: &mut Muxer,
    limiter: &mut LogLimiter,
) -> Result<Served, virtio_queue::Error> {
    let mut used = false;
    let mut more = false;
    let mut budget = RX_BUDGET;
    while muxer.has_rx_work() {
        if budget == 0 {
            more = true;
            break;
        }
        budget -= 1;
        let Some(mut chain) = queue.iter(mem)?.next() else {
            if queue.enable_notification(mem)? {
                continue;
            }
            break;
        };
        let head = chain.head_index();
        let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(mut pkt) => match muxer.fill_rx(&mut pkt) {
                Some(len) => len,
                None => {
                    queue.go_to_previous_position();
                    break;
                }
            },
            Err(e) => {
                warn_limited!(limiter, "virtio-vsock: unusable rx buffer: {e}");
                0
            }
        };
        queue.add_used(mem, head, len)?;
        used = true;
    }
    Ok(Served {
        notify: used && queue.needs_notification(mem)?,
        more,
    })
}

//! Transmit: each TX chain is one frame (header and data, split or merged across
//! descriptors in any way) written to the backend with one `writev`, straight from guest
//! memory. The header goes from a checked copy, so the guest cannot change it after the
//! check.
//!
//! When the backend is full (`EAGAIN`) the chain stays in the queue and processing stops
//! until the backend is writable again; nothing is dropped for lack of host buffer space.

use ember_virtio::chain::{pieces, read_bytes, ChainBuffers};
use ember_virtio::{warn_limited, GuestMemory, LogLimiter, Queue, QueueOwnedT, QueueT};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::backend::Backend;
use crate::device::NetCounters;
use crate::header::{Header, Offloads};
use crate::{BUDGET, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};

/// How a call to [`process_tx`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// The queue is empty and notifications are on.
    Idle,
    /// The backend is full: wait until it is writable, then call again.
    Blocked,
    /// The per-wakeup budget ran out with chains possibly left: call again soon.
    MoreWork,
}

/// Host I/O vectors for one frame. Holds raw pointers only while a frame is being sent;
/// cleared before and after.
#[derive(Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers target guest memory mappings (readable from any thread) or the
// header copy of the same call; they are only used by the thread that owns this value, within
// the call that built them.
unsafe impl Send for IoVecs {}

/// Reusable TX state: nothing is allocated per frame once these have grown.
#[derive(Default)]
pub struct TxContext {
    chain: ChainBuffers,
    iovecs: IoVecs,
    limiter: LogLimiter,
}

enum Sent {
    Done,
    Dropped,
    WouldBlock,
}

/// Sends up to [`BUDGET`] chains of `queue` to `backend`. Returns how processing ended and
/// whether the driver must be interrupted, or the queue error that makes the device unusable.
pub fn process_tx<B: Backend>(
    queue: &mut Queue,
    mem: &GuestMemory,
    backend: &mut B,
    offloads: &Offloads,
    ctx: &mut TxContext,
    counters: &mut NetCounters,
) -> Result<(TxState, bool), virtio_queue::Error> {
    let mut completed = false;
    let mut served = 0;
    let state = 'outer: loop {
        queue.disable_notification(mem)?;
        loop {
            if served == BUDGET {
                break 'outer TxState::MoreWork;
            }
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            match send(chain, mem, backend, offloads, ctx, counters) {
                Sent::WouldBlock => {
                    // Leave the chain for when the backend has room again.
                    queue.go_to_previous_position();
                    break 'outer TxState::Blocked;
                }
                Sent::Done | Sent::Dropped => {
                    queue.add_used(mem, head, 0)?;
                    completed = true;
                    served += 1;
                }
            }
        }
        if !queue.enable_notification(mem)? {
            break TxState::Idle;
        }
    };
    let notify = completed && queue.needs_notification(mem)?;
    Ok((state, notify))
}

fn send<B: Backend>(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    backend: &mut B,
    offloads: &Offloads,
    ctx: &mut TxContext,
    counters: &mut NetCounters,
) -> Sent {
    match build(chain, mem, offloads, ctx) {
        Ok(hdr) => {
            let len = ctx.chain.readable_len();
            let result = write(backend, &hdr, mem, ctx, len);
            ctx.iovecs.0.clear();
            match result {
                Ok(_) => {
                    counters.tx_frames += 1;
                    counters.tx_bytes += len - HDR_LEN as u64;
                    Sent::Done
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::WouldBlock,
                Err(e) => {
                    counters.tx_dropped += 1;
                    warn_limited!(ctx.limiter, "virtio-net: tx frame dropped by the host: {e}");
                    Sent::Dropped
                }
            }
        }
        Err(why) => {
            counters.tx_dropped += 1;
            warn_limited!(ctx.limiter, "virtio-net: tx chain dropped: {why}");
            Sent::Dropped
        }
    }
}

/// Loads and checks the chain; returns the header to send.
fn build(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    offloads: &Offloads,
    ctx: &mut TxContext,
) -> Result<Header, &'static str> {
    ctx.chain
        .load(chain)
        .map_err(|_| "device-writable descriptors in a tx chain")?;
    if !ctx.chain.writable().is_empty() {
        return Err("device-writable descriptors in a tx chain");
    }
    let len = ctx.chain.readable_len();
    if len < (HDR_LEN + ETH_HLEN) as u64 {
        return Err("shorter than a header and an Ethernet frame");
    }
    if len > (HDR_LEN + MAX_FRAME_LEN) as u64 {
        return Err("frame too long");
    }
    let mut hdr = Header::default();
    if !read_bytes(mem, ctx.chain.readable(), 0, &mut hdr) {
        return Err("header outside guest memory");
    }
    if !offloads.sanitize(&mut hdr, false) {
        return Err("header asks for an offload the driver did not negotiate");
    }
    Ok(hdr)
}

/// Gathers the header copy and the guest's frame bytes into one `writev`.
fn write<B: Backend>(
    backend: &mut B,
    hdr: &Header,
    mem: &GuestMemory,
    ctx: &mut TxContext,
    len: u64,
) -> std::io::Result<usize> {
    let iov = &mut ctx.iovecs.0;
    iov.clear();
    iov.push(libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: HDR_LEN,
    });
    let data_len = len - HDR_LEN as u64;
    let mut total = 0u64;
    for (addr, piece) in pieces(ctx.chain.readable(), HDR_LEN as u64, data_len) {
        for slice in GuestMemoryBackend::get_slices(mem, addr, piece) {
            let Ok(slice) = slice else {
                return Err(std::io::Error::other("frame outside guest memory"));
            };
            if !slice.is_empty() {
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                });
            }
        }
        total += piece as u64;
    }
    if total != data_len {
        return Err(std::io::Error::other("frame outside guest memory"));
    }
    // SAFETY: the vectors point into `hdr`, borrowed for this call, and into guest memory
    // slices of `mem`, whose mappings outlive the call.
    unsafe { backend.write_frame(iov) }
}

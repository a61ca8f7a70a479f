//! Receive: one frame at a time is read from the backend into a staging buffer, checked,
//! and copied into guest RX buffers: exactly one without `VIRTIO_NET_F_MRG_RXBUF`, as many
//! as it needs with it (`num_buffers` in the header says how many).
//!
//! Buffers are taken from the queue as the frame needs them and *held* until the frame is
//! complete: when the guest runs out, the frame stays staged, the held buffers wait, and the
//! caller stops reading the backend until the guest adds buffers. Nothing is written beyond a
//! buffer's device-writable length, and nothing is completed before the whole frame is in.

use ember_virtio::chain::{write_bytes, ChainBuffers};
use ember_virtio::{
    add_used_batch, warn_limited, GuestMemory, LogLimiter, Queue, QueueOwnedT, QueueT, UsedNotifier,
};
use vm_memory::GuestMemoryBackend;

use crate::backend::Backend;
use crate::device::NetCounters;
use crate::header::{set_num_buffers, Header, Offloads};
use crate::{BUDGET, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};

/// What the guest accepted for receiving.
#[derive(Debug, Clone, Copy, Default)]
pub struct RxConfig {
    /// `VIRTIO_NET_F_MRG_RXBUF`: a frame may span several buffers.
    pub mergeable: bool,
    /// What may be offloaded to the guest.
    pub offloads: Offloads,
}

/// How a call to [`process_rx`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// The backend has nothing more to read (or the budget ran out): keep watching it.
    Idle,
    /// A frame waits for guest buffers: stop watching the backend until the guest adds some.
    Deferred,
}

/// A buffer taken from the queue and not yet completed.
#[derive(Default)]
struct Held {
    head: u16,
    buf: ChainBuffers,
    cap: u64,
}

/// Reusable RX state: the staging buffer, the staged frame, the held buffers.
pub struct RxContext {
    staging: Box<[u8]>,
    /// Length (header included) of the frame in `staging`; 0 when none.
    staged: usize,
    held: Vec<Held>,
    n_held: usize,
    /// The used elements of the frame being completed, published together.
    used: Vec<(u16, u32)>,
    notifier: UsedNotifier,
    limiter: LogLimiter,
}

impl Default for RxContext {
    fn default() -> Self {
        Self {
            // One byte more than the largest frame, so a longer one is seen as such.
            staging: vec![0; HDR_LEN + MAX_FRAME_LEN + 1].into_boxed_slice(),
            staged: 0,
            held: Vec::new(),
            n_held: 0,
            used: Vec::new(),
            notifier: UsedNotifier::default(),
            limiter: LogLimiter::default(),
        }
    }
}

impl RxContext {
    /// Whether a frame waits for guest buffers.
    pub fn has_staged(&self) -> bool {
        self.staged != 0
    }

    /// Forgets the staged frame and the held buffers (device reset).
    pub fn clear(&mut self) {
        self.staged = 0;
        self.n_held = 0;
        self.notifier = UsedNotifier::default();
    }
}

enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

/// Moves up to [`BUDGET`] frames from `backend` (unless `read_backend` is false, then only
/// the staged one) into `queue`. Returns how processing ended and whether the driver must be
/// interrupted, or the queue error that makes the device unusable.
pub fn process_rx<B: Backend>(
    queue: &mut Queue,
    mem: &GuestMemory,
    backend: &mut B,
    read_backend: bool,
    cfg: &RxConfig,
    ctx: &mut RxContext,
    counters: &mut NetCounters,
) -> Result<(RxState, bool), virtio_queue::Error> {
    let mut completed = false;
    let mut frames = 0;
    let state = loop {
        if ctx.staged == 0 {
            if !read_backend || frames == BUDGET || !read_frame(backend, cfg, ctx, counters) {
                break RxState::Idle;
            }
            frames += 1;
            if ctx.staged == 0 {
                continue; // dropped
            }
        }
        match deliver(queue, mem, cfg, ctx, counters, &mut completed)? {
            Delivery::Done | Delivery::Dropped => ctx.staged = 0,
            Delivery::NoBuffers => {
                // Ask for a kick when buffers come; retry if some came meanwhile.
                if !queue.enable_notification(mem)? {
                    break RxState::Deferred;
                }
            }
        }
    };
    let notify = completed && ctx.notifier.needs_notification(queue, mem)?;
    Ok((state, notify))
}

/// Reads one frame into staging. False when there is nothing to read; true otherwise, with
/// `ctx.staged` zero if the frame was dropped.
fn read_frame<B: Backend>(
    backend: &mut B,
    cfg: &RxConfig,
    ctx: &mut RxContext,
    counters: &mut NetCounters,
) -> bool {
    let n = loop {
        match backend.read_frame(&mut ctx.staging) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                warn_limited!(ctx.limiter, "virtio-net: cannot read from the host: {e}");
                return false;
            }
        }
    };
    let why = if n < HDR_LEN + ETH_HLEN {
        Some("runt frame")
    } else if n > HDR_LEN + cfg.offloads.max_frame() {
        Some("frame larger than the guest accepts")
    } else {
        let mut hdr = Header::default();
        hdr.copy_from_slice(&ctx.staging[..HDR_LEN]);
        let ok = cfg.offloads.sanitize(&mut hdr, true);
        ctx.staging[..HDR_LEN].copy_from_slice(&hdr);
        (!ok).then_some("offload the guest did not accept")
    };
    if let Some(why) = why {
        counters.rx_dropped += 1;
        warn_limited!(
            ctx.limiter,
            "virtio-net: rx frame of {n} bytes dropped: {why}"
        );
    } else {
        ctx.staged = n;
    }
    true
}

/// Takes buffers until the staged frame fits, then copies it in and completes them.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemory,
    cfg: &RxConfig,
    ctx: &mut RxContext,
    counters: &mut NetCounters,
    completed: &mut bool,
) -> Result<Delivery, virtio_queue::Error> {
    let need = ctx.staged as u64;
    let wanted = |ctx: &RxContext| {
        if cfg.mergeable {
            ctx.held[..ctx.n_held].iter().map(|h| h.cap).sum::<u64>() < need
        } else {
            ctx.n_held == 0
        }
    };
    while wanted(ctx) {
        if ctx.n_held >= usize::from(queue.size()) {
            // Every buffer the ring can hold is ours and the frame still does not fit.
            return Ok(drop_frame(
                ctx,
                counters,
                "larger than all rx buffers together",
            ));
        }
        let Some(chain) = queue.iter(mem)?.next() else {
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        if ctx.held.len() == ctx.n_held {
            ctx.held.push(Held::default());
        }
        let slot = &mut ctx.held[ctx.n_held];
        let loaded = slot.buf.load(chain).is_ok();
        match check_buffer(mem, &slot.buf, loaded) {
            Ok(cap) => {
                slot.head = head;
                slot.cap = cap;
                ctx.n_held += 1;
            }
            Err(why) => {
                warn_limited!(ctx.limiter, "virtio-net: rx buffer refused: {why}");
                queue.add_used(mem, head, 0)?;
                *completed = true;
            }
        }
    }
    if !cfg.mergeable && ctx.held[0].cap < need {
        // The buffer stays held for the next frame.
        return Ok(drop_frame(ctx, counters, "larger than the rx buffer"));
    }
    // How many held buffers the frame takes.
    let mut count = 0;
    let mut room = 0;
    while room < need {
        room += ctx.held[count].cap;
        count += 1;
    }
    let num_buffers = if cfg.mergeable { count as u16 } else { 1 };
    set_num_buffers(&mut ctx.staging[..HDR_LEN], num_buffers);
    let mut offset = 0usize;
    ctx.used.clear();
    for held in &ctx.held[..count] {
        let take = (held.cap as usize).min(ctx.staged - offset);
        let data = &ctx.staging[offset..offset + take];
        // Checked against guest memory when taken, so this only fails if memory vanished.
        let len = if write_bytes(mem, held.buf.writable(), 0, data) {
            take as u32
        } else {
            0
        };
        offset += take;
        ctx.used.push((held.head, len));
    }
    // All buffers of the frame appear at once: a driver that saw fewer than `num_buffers`
    // would drop the frame.
    add_used_batch(queue, mem, &ctx.used)?;
    *completed = true;
    ctx.held[..ctx.n_held].rotate_left(count);
    ctx.n_held -= count;
    counters.rx_frames += 1;
    counters.rx_bytes += (ctx.staged - HDR_LEN) as u64;
    Ok(Delivery::Done)
}

fn drop_frame(ctx: &mut RxContext, counters: &mut NetCounters, why: &str) -> Delivery {
    counters.rx_dropped += 1;
    let n = ctx.staged;
    warn_limited!(
        ctx.limiter,
        "virtio-net: rx frame of {n} bytes dropped: {why}"
    );
    Delivery::Dropped
}

/// An RX buffer must be device-writable only, hold at least a header, and lie in guest
/// memory. Returns its usable capacity.
fn check_buffer(mem: &GuestMemory, buf: &ChainBuffers, loaded: bool) -> Result<u64, &'static str> {
    if !loaded || !buf.readable().is_empty() {
        return Err("device-readable descriptors in an rx chain");
    }
    if buf.writable_len() < HDR_LEN as u64 {
        return Err("smaller than a virtio-net header");
    }
    let inside = buf.writable().iter().all(|seg| {
        seg.len == 0 || GuestMemoryBackend::check_range(mem, seg.addr, seg.len as usize)
    });
    if !inside {
        return Err("outside guest memory");
    }
    // Nothing larger than a frame is ever written; capping keeps the arithmetic small.
    Ok(buf.writable_len().min((HDR_LEN + MAX_FRAME_LEN) as u64))
}

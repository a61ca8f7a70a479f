//! The queue logic: each available chain gets its device-writable buffers filled with random
//! bytes, up to [`MAX_BYTES_PER_REQUEST`].

use ember_virtio::chain::{pieces, ChainBuffers};
use ember_virtio::{drain_queue, warn_limited, GuestMemory, LogLimiter, Queue};
use vm_memory::Bytes;

/// Cap on one request, so a guest cannot make the VMM generate gigabytes in one go.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Reusable state: the random bytes buffer and the chain lists.
pub struct RequestContext {
    chain: ChainBuffers,
    buf: Box<[u8]>,
    limiter: LogLimiter,
}

impl Default for RequestContext {
    fn default() -> Self {
        Self {
            chain: ChainBuffers::default(),
            buf: vec![0; MAX_BYTES_PER_REQUEST].into_boxed_slice(),
            limiter: LogLimiter::default(),
        }
    }
}

/// Fills `buf` from the host's `getrandom(2)`.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

/// Serves every available chain on `queue`. Returns whether the driver must be interrupted,
/// or the queue error that makes the queue unusable until reset.
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    ctx: &mut RequestContext,
) -> Result<bool, virtio_queue::Error> {
    drain_queue(queue, mem, |chain| match ctx.chain.load(chain) {
        Ok(()) => fill(mem, ctx),
        Err(e) => {
            warn_limited!(ctx.limiter, "virtio-rng: {e}");
            0
        }
    })
}

/// Fills the loaded chain's writable buffers; returns the bytes written.
fn fill(mem: &GuestMemory, ctx: &mut RequestContext) -> u32 {
    let want = ctx.chain.writable_len().min(MAX_BYTES_PER_REQUEST as u64) as usize;
    if let Err(e) = getrandom(&mut ctx.buf[..want]) {
        warn_limited!(ctx.limiter, "virtio-rng: host getrandom failed: {e}");
        return 0;
    }
    let mut written = 0;
    for (addr, len) in pieces(ctx.chain.writable(), 0, want as u64) {
        if mem
            .write_slice(&ctx.buf[written..written + len], addr)
            .is_err()
        {
            warn_limited!(ctx.limiter, "virtio-rng: buffer outside guest memory");
            break;
        }
        written += len;
    }
    // Bytes already copied are not reused for anything else.
    ctx.buf[..want].fill(0);
    written as u32
}

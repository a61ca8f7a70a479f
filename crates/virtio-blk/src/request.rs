//! The queue logic: turning descriptor chains into disk I/O and completions.
//!
//! A request is a device-readable 16-byte header (type, reserved, sector), data (readable
//! for writes, writable for reads) and a final device-writable status byte. Descriptors may
//! split or merge those parts freely (`VIRTIO_F_VERSION_1` implies any layout). Whatever
//! the guest sends, the answer is a status byte or, when there is nowhere to put one, a
//! used entry of length zero; never a panic, never a hang.

use ember_virtio::chain::{pieces, read_bytes, write_bytes, ChainBuffers, Segment};
use ember_virtio::{drain_queue, warn_limited, GuestMemory, LogLimiter, Queue};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::disk::DiskFile;
use crate::SECTOR_SIZE;

const HEADER_LEN: usize = 16;

/// The drive ID `GET_ID` returns: up to 20 bytes, NUL-padded.
pub type DriveId = [u8; VIRTIO_BLK_ID_BYTES as usize];

/// Makes a [`DriveId`] from a name, truncated to 20 bytes.
pub fn drive_id(name: &str) -> DriveId {
    let mut id = DriveId::default();
    let n = name.len().min(id.len());
    id[..n].copy_from_slice(&name.as_bytes()[..n]);
    id
}

/// Host I/O vectors for one request. Holds raw pointers into guest memory only between
/// building and submitting a request; cleared before and after.
#[derive(Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the vectors point into guest memory mappings, which every thread may access; they
// are only dereferenced by the kernel during a preadv/pwritev issued by the thread that owns
// this value at the time.
unsafe impl Send for IoVecs {}

/// Reusable per-queue state: nothing is allocated per request once these have grown.
#[derive(Default)]
pub struct RequestContext {
    chain: ChainBuffers,
    iovecs: IoVecs,
    limiter: LogLimiter,
}

/// Why a request failed before reaching the disk.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Status `IOERR`, with the reason for the log.
    IoErr(&'static str),
    /// Status `UNSUPP`.
    Unsupported(u32),
}

/// Serves every available request on `queue`. Returns whether the driver must be
/// interrupted, or the queue error that makes the queue unusable until reset.
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    disk: &DiskFile,
    id: &DriveId,
    ctx: &mut RequestContext,
) -> Result<bool, virtio_queue::Error> {
    drain_queue(queue, mem, |chain| match ctx.chain.load(chain) {
        Ok(()) => serve(mem, disk, id, ctx),
        Err(e) => {
            warn_limited!(ctx.limiter, "virtio-blk {}: {e}", disk.path().display());
            0
        }
    })
}

/// Serves the request loaded in `ctx.chain`; returns the used length.
fn serve(mem: &GuestMemory, disk: &DiskFile, id: &DriveId, ctx: &mut RequestContext) -> u32 {
    let writable_len = ctx.chain.writable_len();
    if writable_len == 0 || writable_len > u64::from(u32::MAX) {
        warn_limited!(
            ctx.limiter,
            "virtio-blk {}: request without a status byte dropped",
            disk.path().display()
        );
        return 0;
    }
    let data_in = writable_len - 1;
    // Claim the status byte first: a request with nowhere to report is never executed.
    if !write_bytes(
        mem,
        ctx.chain.writable(),
        data_in,
        &[VIRTIO_BLK_S_IOERR as u8],
    ) {
        warn_limited!(
            ctx.limiter,
            "virtio-blk {}: status byte outside guest memory",
            disk.path().display()
        );
        return 0;
    }
    let (status, written) = match execute(mem, disk, id, ctx, data_in) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(Refusal::IoErr(why)) => {
            warn_limited!(ctx.limiter, "virtio-blk {}: {why}", disk.path().display());
            (VIRTIO_BLK_S_IOERR, 0)
        }
        Err(Refusal::Unsupported(t)) => {
            log::debug!("virtio-blk: unsupported request type {t}");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    };
    if !write_bytes(mem, ctx.chain.writable(), data_in, &[status as u8]) {
        warn_limited!(
            ctx.limiter,
            "virtio-blk {}: status byte outside guest memory",
            disk.path().display()
        );
        return 0;
    }
    // `written` never exceeds `data_in`, which is below u32::MAX.
    written as u32 + 1
}

/// Runs one request; returns the number of data bytes written into the guest.
fn execute(
    mem: &GuestMemory,
    disk: &DiskFile,
    id: &DriveId,
    ctx: &mut RequestContext,
    data_in: u64,
) -> Result<u64, Refusal> {
    let mut header = [0u8; HEADER_LEN];
    if !read_bytes(mem, ctx.chain.readable(), 0, &mut header) {
        return Err(Refusal::IoErr(
            "request header missing or outside guest memory",
        ));
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let data_out = ctx.chain.readable_len() - HEADER_LEN as u64;
    match kind {
        VIRTIO_BLK_T_IN => {
            let offset = check_bounds(disk, sector, data_in)?;
            let iovecs = build_iovecs(mem, ctx.chain.writable(), data_in, &mut ctx.iovecs)?;
            let result = disk.transfer(iovecs, offset, false);
            ctx.iovecs.0.clear();
            result.map_err(io_refusal)?;
            Ok(data_in)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return Err(Refusal::IoErr("write to a read-only disk refused"));
            }
            let offset = check_bounds(disk, sector, data_out)?;
            let readable = ctx.chain.readable();
            let iovecs =
                build_iovecs_from(mem, readable, HEADER_LEN as u64, data_out, &mut ctx.iovecs)?;
            let result = disk.transfer(iovecs, offset, true);
            ctx.iovecs.0.clear();
            result.map_err(io_refusal)?;
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => disk.flush().map(|()| 0).map_err(io_refusal),
        VIRTIO_BLK_T_GET_ID => {
            let n = (id.len() as u64).min(data_in);
            if !write_bytes(mem, ctx.chain.writable(), 0, &id[..n as usize]) {
                return Err(Refusal::IoErr("GET_ID buffer outside guest memory"));
            }
            Ok(n)
        }
        other => Err(Refusal::Unsupported(other)),
    }
}

fn io_refusal(err: std::io::Error) -> Refusal {
    log::debug!("virtio-blk: host I/O error: {err}");
    Refusal::IoErr("host I/O error")
}

/// Checks that `len` bytes at `sector` are whole sectors inside the disk; returns the byte
/// offset.
fn check_bounds(disk: &DiskFile, sector: u64, len: u64) -> Result<u64, Refusal> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Refusal::IoErr(
            "data length is not a whole number of sectors",
        ));
    }
    let end = sector.checked_add(len / SECTOR_SIZE);
    if end.is_none_or(|end| end > disk.sectors()) {
        return Err(Refusal::IoErr("request beyond the end of the disk"));
    }
    Ok(sector * SECTOR_SIZE)
}

fn build_iovecs<'a>(
    mem: &GuestMemory,
    segs: &[Segment],
    len: u64,
    out: &'a mut IoVecs,
) -> Result<&'a mut [libc::iovec], Refusal> {
    build_iovecs_from(mem, segs, 0, len, out)
}

/// Host vectors for bytes `[start, start + len)` of `segs`.
fn build_iovecs_from<'a>(
    mem: &GuestMemory,
    segs: &[Segment],
    start: u64,
    len: u64,
    out: &'a mut IoVecs,
) -> Result<&'a mut [libc::iovec], Refusal> {
    out.0.clear();
    let mut total = 0u64;
    for (addr, piece) in pieces(segs, start, len) {
        push_slices(mem, addr, piece, &mut out.0)?;
        total += piece as u64;
    }
    if total != len {
        out.0.clear();
        return Err(Refusal::IoErr("data buffers shorter than the request"));
    }
    Ok(&mut out.0)
}

fn push_slices(
    mem: &GuestMemory,
    addr: GuestAddress,
    len: usize,
    out: &mut Vec<libc::iovec>,
) -> Result<(), Refusal> {
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let Ok(slice) = slice else {
            out.clear();
            return Err(Refusal::IoErr("data buffer outside guest memory"));
        };
        if !slice.is_empty() {
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

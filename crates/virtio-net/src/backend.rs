//! The host side of the device: something that carries one Ethernet frame (with its 12-byte
//! virtio-net header in front) per read or write, like a tap with `IFF_VNET_HDR`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// A frame transport the queue logic reads from and writes to. [`crate::Tap`] is the real
/// one; tests use a `SOCK_SEQPACKET` socket pair, which keeps message boundaries the same way.
/// The file descriptor must be non-blocking.
pub trait Backend: AsRawFd + Send {
    /// Reads one frame (header included) into `buf`; `WouldBlock` when none is pending.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame gathered from `iov`; `WouldBlock` when the host cannot take it now.
    ///
    /// # Safety
    ///
    /// Every entry of `iov` must describe memory that stays valid for reads for the whole call.
    unsafe fn write_frame(&mut self, iov: &[libc::iovec]) -> io::Result<usize>;

    /// Tells the host which offloads (`TUN_F_*`) the guest can receive. Only a tap cares.
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        let _ = tun_flags;
        Ok(())
    }
}

/// `read(2)` on `fd` into `buf`.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we borrow mutably.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `writev(2)` of `iov` to `fd`.
///
/// # Safety
///
/// Every entry of `iov` must describe memory valid for reads for the whole call.
pub unsafe fn writev_fd(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let count =
        libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the caller guarantees the vectors are readable; the kernel only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

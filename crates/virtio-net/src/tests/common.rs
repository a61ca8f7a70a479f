//! Test helpers: guest memory, a socket-pair backend, frames, and a second ring for tests
//! that need both queues (the mock `Driver` always lives at guest address 0).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ember_virtio::testing::{get, put};
use ember_virtio::{GuestMemory, Queue, QueueT};
use vm_memory::GuestAddress;

use crate::backend::{read_fd, writev_fd, Backend};
use crate::HDR_LEN;

/// Two adjacent 1 MiB regions.
pub const REGION: u64 = 0x10_0000;
pub const MEM_END: u64 = 2 * REGION;
pub const OUTSIDE: u64 = 0x4000_0000;
/// Where buffers start (rings live below).
pub const BUFS: u64 = 0x1_0000;

pub fn guest_memory() -> GuestMemory {
    let size = REGION as usize;
    GuestMemory::from_ranges(&[(GuestAddress(0), size), (GuestAddress(REGION), size)]).unwrap()
}

/// One end of a non-blocking `SOCK_SEQPACKET` pair.
pub struct Sock(pub OwnedFd);

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Backend for Sock {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.as_raw_fd(), buf)
    }

    unsafe fn write_frame(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: forwarded from our caller.
        unsafe { writev_fd(self.as_raw_fd(), iov) }
    }
}

impl Sock {
    /// Sends one message.
    pub fn send(&self, data: &[u8]) -> io::Result<usize> {
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }];
        // SAFETY: `data` is borrowed for the call.
        unsafe { writev_fd(self.as_raw_fd(), &iov) }
    }

    /// Receives one message, or None if there is none.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        match read_fd(self.as_raw_fd(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Every pending message.
    pub fn recv_all(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// Shrinks the send buffer.
    pub fn set_sndbuf(&self, bytes: libc::c_int) {
        // SAFETY: SO_SNDBUF reads one int through the pointer, valid for the call.
        let ret = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0);
    }
}

/// (device end, peer end).
pub fn socket_pair() -> (Sock, Sock) {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two fds into the array we own.
    let ret = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds are new and owned by nobody else.
    unsafe {
        (
            Sock(OwnedFd::from_raw_fd(fds[0])),
            Sock(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

/// A recognisable Ethernet frame of `len` bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// `hdr` (flags, gso type) followed by `data`, as a tap would carry it.
pub fn with_header(flags: u8, gso: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0] = flags;
    v[1] = gso;
    v.extend_from_slice(data);
    v
}

/// Fills `len` bytes at `addr` with the guard pattern.
pub fn guard(mem: &GuestMemory, addr: u64, len: usize) {
    put(mem, addr, &vec![0xa5; len]);
}

/// Checks the guard pattern is intact.
pub fn guard_intact(mem: &GuestMemory, addr: u64, len: usize) -> bool {
    get(mem, addr, len).iter().all(|&b| b == 0xa5)
}

/// A minimal split-queue driver at `base`, for a second queue next to the mock `Driver`.
pub struct Ring<'a> {
    mem: &'a GuestMemory,
    base: u64,
    size: u16,
    avail: u16,
    free: u16,
}

impl<'a> Ring<'a> {
    pub fn new(mem: &'a GuestMemory, base: u64, size: u16) -> Self {
        put(mem, base, &vec![0u8; 0x1000]);
        Self {
            mem,
            base,
            size,
            avail: 0,
            free: 0,
        }
    }

    fn avail_addr(&self) -> u64 {
        self.base + 16 * u64::from(self.size)
    }

    fn used_addr(&self) -> u64 {
        self.base + 0x800
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.base))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail_addr()))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used_addr()))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Offers one chain of `(addr, len, writable)` buffers.
    pub fn push(&mut self, segs: &[(u64, u32, bool)]) -> u16 {
        let head = self.free;
        for (i, &(addr, len, write)) in segs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let mut flags = if write { 2u16 } else { 0 };
            if i + 1 < segs.len() {
                flags |= 1;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            put(self.mem, self.base + 16 * u64::from(index), &d);
        }
        self.free = (head + segs.len() as u16) % self.size;
        let slot = self.avail_addr() + 4 + 2 * u64::from(self.avail % self.size);
        put(self.mem, slot, &head.to_le_bytes());
        self.avail = self.avail.wrapping_add(1);
        put(self.mem, self.avail_addr() + 2, &self.avail.to_le_bytes());
        head
    }

    pub fn used_idx(&self) -> u16 {
        let b = get(self.mem, self.used_addr() + 2, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

/// Every offload feature bit the device offers.
pub fn offload_features() -> u64 {
    crate::device::OFFLOAD_FEATURES
}

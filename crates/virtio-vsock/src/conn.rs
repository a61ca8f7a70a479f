//! One stream connection between a guest socket and a host Unix socket: credit accounting in
//! both directions, the guest-to-host byte buffer, and half-close state. No event-loop types:
//! the muxer asks each connection which readiness it wants ([`Connection::interest`]).

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

use crate::packet::Header;
use crate::{BUF_ALLOC, MAX_PKT_DATA};

/// A connection's identity: the host-side port and the guest-side port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

/// The readiness a watched fd is registered for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Wants `EPOLLIN`.
    pub read: bool,
    /// Wants `EPOLLOUT`.
    pub write: bool,
}

impl Interest {
    /// `EPOLLIN` only.
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: the guest has been sent `OP_REQUEST` and has not answered yet.
    AwaitingResponse,
    /// Bytes flow.
    Established,
}

/// What reading the host socket into a guest buffer gave.
pub(crate) enum HostRead {
    /// This many bytes.
    Data(u32),
    /// Nothing right now.
    WouldBlock,
    /// End of stream.
    Eof,
    /// The socket failed.
    Failed,
}

/// Why a connection must be reset.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The guest sent more than the credit it was given, or data after `SHUTDOWN_SEND`.
    Protocol,
    /// The host socket failed.
    Host,
}

/// One connection.
pub(crate) struct Connection {
    pub stream: UnixStream,
    /// Unique among all connections ever made by this device (for timeouts).
    pub id: u64,
    pub state: State,
    /// The host port was allocated for a host-initiated connection.
    pub host_initiated: bool,
    /// What the fd is registered for; `None` when not in the epoll set.
    pub registered: Option<Interest>,
    /// Waiting in the muxer's round-robin list of connections to read from.
    pub in_rx_ready: bool,
    /// A `CREDIT_UPDATE` / `CREDIT_REQUEST` is in the control queue.
    pub credit_update_queued: bool,
    pub credit_requested: bool,
    /// Guest bytes not yet accepted by the host socket.
    pending: VecDeque<u8>,
    /// Guest bytes written to the host socket, ever.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest, ever.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The guest sent `SHUTDOWN_SEND` / `SHUTDOWN_RCV`.
    pub guest_no_send: bool,
    pub guest_no_recv: bool,
    /// Reading the host socket gave end-of-stream.
    pub host_eof: bool,
    /// The host socket reported a hang-up (both directions closed on the host side).
    pub host_hup: bool,
    host_write_shut: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, id: u64, state: State, host_initiated: bool) -> Self {
        Self {
            stream,
            id,
            state,
            host_initiated,
            registered: None,
            in_rx_ready: false,
            credit_update_queued: false,
            credit_requested: false,
            pending: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_no_send: false,
            guest_no_recv: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Takes the guest's view of its receive buffer from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Stamps `hdr` with this side's credit; the guest now knows the current `fwd_cnt`.
    pub fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether host data may be read for the guest now.
    pub fn can_read_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_no_recv
            && self.peer_credit() > 0
    }

    /// The readiness to watch the host socket for. `Some(empty)` keeps a connection whose host
    /// side is at end-of-stream registered, so a hang-up still reports.
    pub fn interest(&self) -> Option<Interest> {
        let read = !self.in_rx_ready && self.can_read_host();
        let write = !self.pending.is_empty();
        if read || write || (self.state == State::Established && self.host_eof) {
            Some(Interest { read, write })
        } else {
            None
        }
    }

    /// Takes an `OP_RW` payload for the host: written straight through when nothing is queued,
    /// the rest kept until the socket is writable.
    pub fn recv_from_guest(&mut self, data: &VolatileSlice<'_>) -> Result<(), Fault> {
        if self.guest_no_send || self.pending.len() + data.len() > BUF_ALLOC as usize {
            return Err(Fault::Protocol);
        }
        let mut done = 0;
        if self.pending.is_empty() {
            let guard = data.ptr_guard();
            done = match send_nosignal(self.fd(), guard.as_ptr(), data.len()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return Err(Fault::Host),
            };
            self.fwd_cnt += done as u32;
        }
        if done < data.len() {
            let rest = data
                .subslice(done, data.len() - done)
                .map_err(|_| Fault::Host)?;
            let mut buf = vec![0u8; rest.len()];
            rest.copy_to(&mut buf[..]);
            self.pending.extend(buf);
        }
        Ok(())
    }

    /// Writes queued guest bytes to the host socket until it would block, then half-closes it
    /// if the guest is done sending.
    pub fn flush(&mut self) -> Result<(), Fault> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match send_nosignal(self.fd(), front.as_ptr(), front.len()) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Fault::Host),
            }
        }
        if self.pending.capacity() > MAX_PKT_DATA as usize {
            self.pending = VecDeque::new();
        }
        if self.guest_no_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Whether the guest should be told about freed buffer space: what it believes is free has
    /// fallen under half of `BUF_ALLOC` while at least half is really free.
    pub fn wants_credit_update(&self) -> bool {
        let received = self.fwd_cnt + Wrapping(self.pending.len() as u32);
        let believed_free = BUF_ALLOC.saturating_sub((received - self.fwd_cnt_sent).0);
        let free = BUF_ALLOC.saturating_sub(self.pending.len() as u32);
        self.fwd_cnt != self.fwd_cnt_sent && believed_free < BUF_ALLOC / 2 && free >= BUF_ALLOC / 2
    }

    /// Whether no guest bytes wait for the host.
    pub fn flushed(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether both directions are over, so the connection ends with `OP_RST`.
    pub fn finished(&self) -> bool {
        if self.state != State::Established {
            return false;
        }
        (self.host_eof && self.host_hup)
            || (self.flushed() && self.guest_no_send && (self.guest_no_recv || self.host_eof))
    }

    /// Reads host bytes into `buf`, within the guest's credit.
    pub fn read_host(&mut self, buf: &VolatileSlice<'_>) -> HostRead {
        let n = (buf.len() as u64)
            .min(u64::from(self.peer_credit()))
            .min(u64::from(MAX_PKT_DATA)) as usize;
        let Ok(mut dst) = buf.subslice(0, n) else {
            return HostRead::Failed;
        };
        match (&self.stream).read_volatile(&mut dst) {
            Ok(0) => {
                self.host_eof = true;
                HostRead::Eof
            }
            Ok(n) => {
                self.rx_cnt += n as u32;
                HostRead::Data(n as u32)
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                HostRead::WouldBlock
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {
                HostRead::WouldBlock
            }
            Err(_) => HostRead::Failed,
        }
    }
}

/// `send(2)` without `SIGPIPE`, never blocking.
pub(crate) fn send_nosignal(fd: RawFd, buf: *const u8, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: the callers pass a pointer to `len` readable bytes (a slice, or guest memory
        // kept mapped by a `PtrGuard`); `send` only reads them.
        let n = unsafe { libc::send(fd, buf.cast(), len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

//! The host side of the protocol: accepting host clients and reading their `CONNECT <port>\n`
//! line, connecting to `<uds_path>_<port>` for the guest, allocating host ports, and the
//! timeouts of connection setup.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_virtio::warn_limited;

use crate::conn::{send_nosignal, ConnKey, Connection, Interest, State};
use crate::muxer::{Muxer, Readiness};
use crate::packet::{Header, HOST_CID, OP_REQUEST, OP_RESPONSE};
use crate::{FIRST_HOST_PORT, MAX_CONNECT_LINE, MAX_PENDING_ACCEPTS};

/// Host clients accepted per listener wake-up.
const ACCEPT_BATCH: usize = 16;
/// How long the listener is not watched after `accept` failed for lack of resources (file
/// descriptors, memory): the client stays in the backlog and the listener stays readable, so
/// watching it would spin the level-triggered event loop.
pub(crate) const LISTENER_PAUSE: Duration = Duration::from_millis(100);

/// An accepted host client that has not finished its `CONNECT` line.
pub(crate) struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    id: u64,
    pub registered: Option<Interest>,
}

/// Something that times out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    /// A host client's `CONNECT` line.
    Line { fd: RawFd, id: u64 },
    /// The guest's answer to a host-initiated `OP_REQUEST`.
    Answer { key: ConnKey, id: u64 },
    /// The end of a listener pause after a failed `accept`.
    ListenerPause,
}

/// The guest port of a `CONNECT <port>` line (without its newline).
pub(crate) fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => port.parse().ok(),
        _ => None,
    }
}

/// Connects to the Unix socket at `path` without blocking (a full backlog is a refusal).
pub(crate) fn connect_nonblocking(path: &OsStr) -> io::Result<UnixStream> {
    let bytes = path.as_bytes();
    // SAFETY: an all-zero `sockaddr_un` is a valid value of this plain C struct.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` and `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

impl Muxer {
    /// Accepts waiting host clients, up to the limit of half-accepted ones.
    pub fn on_listener(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            if self.pending.len() >= MAX_PENDING_ACCEPTS {
                return;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    warn_limited!(
                        self.limiter,
                        "virtio-vsock: accept failed, pausing host connections: {e}"
                    );
                    self.pause_listener();
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let id = self.fresh_id();
            self.pending.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    id,
                    registered: None,
                },
            );
            self.dirty.push(fd);
            let at = Instant::now() + self.timeout;
            self.deadlines.push_back((at, Deadline::Line { fd, id }));
        }
    }

    /// Reads a host client's `CONNECT` line byte by byte, so nothing after the newline is
    /// consumed; once complete, asks the guest to accept the connection.
    pub fn on_pending(&mut self, fd: RawFd, ready: Readiness) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        if ready.err {
            self.drop_pending(fd);
            return;
        }
        let port = loop {
            if p.line.len() >= MAX_CONNECT_LINE {
                break None;
            }
            let mut byte = [0u8];
            match (&p.stream).read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(port) = port.filter(|_| !self.full()) else {
            self.drop_pending(fd);
            return;
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let local_port = self.allocate_port(port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Connection::new(p.stream, p.id, State::AwaitingResponse, true);
        conn.registered = p.registered;
        self.allocated.insert(local_port);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.dirty.push(fd);
        let at = Instant::now() + self.timeout;
        let id = p.id;
        self.deadlines.push_back((at, Deadline::Answer { key, id }));
        self.queue_conn_ctrl(key, OP_REQUEST);
    }

    /// Stops watching the listener for [`LISTENER_PAUSE`].
    fn pause_listener(&mut self) {
        if self.listener_paused {
            return;
        }
        self.listener_paused = true;
        let at = Instant::now() + LISTENER_PAUSE;
        // Deadlines are kept in time order; this one is usually earlier than the others.
        let pos = self.deadlines.partition_point(|&(t, _)| t <= at);
        self.deadlines.insert(pos, (at, Deadline::ListenerPause));
    }

    /// Closes a half-accepted host client.
    pub fn drop_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            self.retired.push((p.stream, p.registered.is_some()));
        }
    }

    /// A host port for a new host-initiated connection to guest port `peer_port`: counting up
    /// from 2^30, skipping ports in use.
    fn allocate_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.allocated.contains(&port) && !self.conns.contains_key(&key) {
                return port;
            }
        }
    }

    /// The guest answered `OP_RESPONSE` to a host-initiated request: tell the host client.
    pub fn host_connected(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let line = format!("OK {}\n", key.local_port);
        match send_nosignal(conn.fd(), line.as_ptr(), line.len()) {
            Ok(n) if n == line.len() => conn.state = State::Established,
            _ => self.reset_conn(key),
        }
    }

    /// The guest asks for a connection to host port `key.local_port`.
    pub fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.full() {
            warn_limited!(self.limiter, "virtio-vsock: connection limit reached");
            self.queue_ctrl(HOST_CID, key, crate::packet::OP_RST, 0);
            return;
        }
        let mut path = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!(
                    "virtio-vsock: guest connection to host port {} refused: {}: {e}",
                    key.local_port,
                    Path::new(&path).display()
                );
                self.queue_ctrl(HOST_CID, key, crate::packet::OP_RST, 0);
                return;
            }
        };
        let id = self.fresh_id();
        let mut conn = Connection::new(stream, id, State::Established, false);
        conn.update_peer_credit(hdr);
        self.by_fd.insert(conn.fd(), key);
        self.dirty.push(conn.fd());
        self.conns.insert(key, conn);
        self.queue_conn_ctrl(key, OP_RESPONSE);
    }

    /// The timeout timer fired: drop host clients whose line or whose guest answer is late.
    pub fn on_timer(&mut self) {
        // The timer fd is non-blocking; a stale wake-up reads nothing.
        let _ = self.timer.wait();
        self.timer_armed = None;
        let now = Instant::now();
        while let Some(&(at, what)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            match what {
                Deadline::Line { fd, id } => {
                    if self.pending.get(&fd).is_some_and(|p| p.id == id) {
                        log::debug!("virtio-vsock: host client sent no CONNECT line in time");
                        self.drop_pending(fd);
                    }
                }
                Deadline::Answer { key, id } => {
                    let late = self
                        .conns
                        .get(&key)
                        .is_some_and(|c| c.id == id && c.state == State::AwaitingResponse);
                    if late {
                        log::debug!(
                            "virtio-vsock: guest did not answer a connection to port {} in time",
                            key.peer_port
                        );
                        self.reset_conn(key);
                    }
                }
                Deadline::ListenerPause => self.listener_paused = false,
            }
        }
    }

    /// Arms the timer for the earliest deadline, if it is not already.
    pub fn rearm_timer(&mut self) {
        let next = self.deadlines.front().map(|&(at, _)| at);
        if next == self.timer_armed {
            return;
        }
        let result = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::error!("virtio-vsock: cannot arm the timeout timer: {e}");
        }
        self.timer_armed = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT  7\r"), Some(7));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 52 53"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }

    #[test]
    fn connect_refuses_long_or_missing_paths() {
        let long = "x".repeat(200);
        assert!(connect_nonblocking(OsStr::new(&long)).is_err());
        assert!(connect_nonblocking(OsStr::new("/nonexistent/ember-vsock")).is_err());
    }
}

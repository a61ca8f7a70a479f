//! The muxer: every connection of one device, the control packets waiting for RX buffers, and
//! the packets the guest sends. RX filling lives in `rx`, the host side (listener, `CONNECT`
//! lines, outgoing connects, timeouts) in `host`.
//!
//! Host sockets are watched by the event loop; the muxer records which readiness each fd
//! should be watched for and hands the changes out in [`Muxer::sync_interest`], closing
//! sockets only after they left the epoll set (its fd-keyed bookkeeping would otherwise see
//! a reused fd number as still registered).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_virtio::{warn_limited, LogLimiter};
use vm_memory::VolatileSlice;
use vmm_sys_util::timerfd::TimerFd;

use crate::conn::{ConnKey, Connection, Fault, Interest, State};
use crate::host::{Deadline, PendingHost};
use crate::packet::*;
use crate::{CONNECT_TIMEOUT, FIRST_HOST_PORT, MAX_CONNECTIONS};

/// A change to the epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdOp {
    /// Start watching `fd`, reporting `token` as event data.
    Add {
        fd: RawFd,
        token: u32,
        interest: Interest,
    },
    /// Change what `fd` is watched for.
    Modify {
        fd: RawFd,
        token: u32,
        interest: Interest,
    },
    /// Stop watching `fd`.
    Remove { fd: RawFd },
}

/// What epoll reported for an fd.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Readiness {
    /// `EPOLLIN`.
    pub readable: bool,
    /// `EPOLLOUT`.
    pub writable: bool,
    /// `EPOLLHUP`.
    pub hup: bool,
    /// `EPOLLERR`.
    pub err: bool,
}

/// A control packet waiting for an RX buffer; credit fields are filled in when it is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctrl {
    /// The CID the packet comes from (the host's, or the one a refused guest packet named).
    pub src_cid: u64,
    pub key: ConnKey,
    pub op: u16,
    pub flags: u32,
    /// The connection the packet belongs to (0: none); a packet queued for an earlier
    /// connection between the same ports is stale and never sent.
    pub conn_id: u64,
}

/// All connection state of one device.
pub(crate) struct Muxer {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub listener: UnixListener,
    pub listener_token: u32,
    pub listener_reg: Option<Interest>,
    /// `accept` failed for lack of resources: the listener is not watched for a while.
    pub listener_paused: bool,
    pub conns: HashMap<ConnKey, Connection>,
    pub by_fd: HashMap<RawFd, ConnKey>,
    /// Host ports handed out to host-initiated connections.
    pub allocated: HashSet<u32>,
    pub next_port: u32,
    pub pending: HashMap<RawFd, PendingHost>,
    pub ctrl: VecDeque<Ctrl>,
    pub rx_ready: VecDeque<ConnKey>,
    /// Fds whose wanted readiness may have changed.
    pub dirty: Vec<RawFd>,
    /// Sockets to close, and whether they are in the epoll set.
    pub retired: Vec<(UnixStream, bool)>,
    pub deadlines: VecDeque<(Instant, Deadline)>,
    pub timer: TimerFd,
    pub timer_armed: Option<Instant>,
    pub timeout: Duration,
    pub next_id: u64,
    pub limiter: LogLimiter,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        listener_token: u32,
        timer: TimerFd,
    ) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            listener_token,
            listener_reg: None,
            listener_paused: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            allocated: HashSet::new(),
            next_port: FIRST_HOST_PORT,
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            deadlines: VecDeque::new(),
            timer,
            timer_armed: None,
            timeout: CONNECT_TIMEOUT,
            next_id: 0,
            limiter: LogLimiter::default(),
        }
    }

    /// Drops every connection and half-accepted host socket; the listener stays.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.drop_pending(fd);
        }
        self.ctrl.clear();
        self.rx_ready.clear();
        self.deadlines.clear();
        self.listener_paused = false;
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Queues a control packet; false if the queue is full.
    pub fn queue_ctrl(&mut self, src_cid: u64, key: ConnKey, op: u16, flags: u32) -> bool {
        self.push_ctrl(Ctrl {
            src_cid,
            key,
            op,
            flags,
            conn_id: 0,
        })
    }

    /// Queues a control packet of an existing connection, resetting the connection (without
    /// telling the guest) when the queue is full.
    pub fn queue_conn_ctrl(&mut self, key: ConnKey, op: u16) {
        if !self.push_ctrl(self.conn_ctrl(key, op)) {
            warn_limited!(
                self.limiter,
                "virtio-vsock: control queue full (the guest posts no RX buffers); dropping connection {}:{}",
                key.local_port,
                key.peer_port
            );
            self.remove_conn(key);
        }
    }

    /// Closes a connection's host socket; the guest is not told.
    pub fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.fd());
            if conn.host_initiated {
                self.allocated.remove(&key.local_port);
            }
            self.retired.push((conn.stream, conn.registered.is_some()));
        }
    }

    /// Closes a connection and sends the guest `OP_RST`.
    pub fn reset_conn(&mut self, key: ConnKey) {
        let rst = self.conn_ctrl(key, OP_RST);
        self.remove_conn(key);
        if !self.push_ctrl(rst) {
            warn_limited!(
                self.limiter,
                "virtio-vsock: control queue full, RST dropped"
            );
        }
    }

    /// Answers a guest packet that matches no connection with `OP_RST`.
    fn refuse(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if !self.queue_ctrl(hdr.dst_cid, key, OP_RST, 0) {
            warn_limited!(
                self.limiter,
                "virtio-vsock: control queue full, RST dropped"
            );
        }
    }

    /// Ends the connection with `OP_RST` if both directions are over.
    fn check_finished(&mut self, key: ConnKey) {
        if self.conns.get(&key).is_some_and(Connection::finished) {
            self.reset_conn(key);
        }
    }

    /// Queues `CREDIT_UPDATE` if the guest is running low on what it believes it may send.
    fn maybe_credit_update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.wants_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.queue_conn_ctrl(key, OP_CREDIT_UPDATE);
        }
    }

    /// Handles one packet from the TX queue; `hdr.src_cid` has been checked.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: Option<&VolatileSlice<'_>>) {
        log::trace!(
            "virtio-vsock: guest op {} {}->{} len {} flags {} buf_alloc {} fwd_cnt {}",
            hdr.op,
            hdr.src_port,
            hdr.dst_port,
            hdr.len,
            hdr.flags,
            hdr.buf_alloc,
            hdr.fwd_cnt
        );
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.refuse(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.op == OP_REQUEST {
            if self.conns.contains_key(&key) {
                self.reset_conn(key);
            } else {
                self.guest_connect(key, hdr);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.refuse(hdr);
            }
            return;
        };
        conn.update_peer_credit(hdr);
        self.dirty.push(conn.fd());
        let established = conn.state == State::Established;
        match hdr.op {
            OP_RST => self.remove_conn(key),
            OP_RESPONSE if !established => self.host_connected(key),
            OP_RW if established => {
                let result = match data {
                    Some(data) => conn.recv_from_guest(data),
                    None => Ok(()),
                };
                match result {
                    Ok(()) => self.maybe_credit_update(key),
                    Err(Fault::Protocol) => {
                        warn_limited!(
                            self.limiter,
                            "virtio-vsock: guest overran its credit on port {}, resetting",
                            key.local_port
                        );
                        self.reset_conn(key);
                    }
                    Err(Fault::Host) => self.reset_conn(key),
                }
            }
            OP_SHUTDOWN if established => {
                conn.guest_no_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.guest_no_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if conn.flushed() && conn.flush().is_err() {
                    self.reset_conn(key);
                } else {
                    self.check_finished(key);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.queue_conn_ctrl(key, OP_CREDIT_UPDATE);
                }
            }
            _ => self.reset_conn(key),
        }
    }

    /// Handles readiness of a connection's host socket.
    pub fn on_conn_event(&mut self, key: ConnKey, ready: Readiness) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        self.dirty.push(conn.fd());
        let reg = conn.registered.unwrap_or_default();
        if ready.err {
            self.reset_conn(key);
            return;
        }
        if ready.hup {
            if !reg.read {
                // Nothing more to read and nobody to write to.
                self.reset_conn(key);
                return;
            }
            conn.host_hup = true;
        }
        if reg.read && (ready.readable || ready.hup) && !conn.in_rx_ready {
            conn.in_rx_ready = true;
            self.rx_ready.push_back(key);
        }
        if reg.write && ready.writable && !ready.hup {
            if conn.flush().is_err() {
                self.reset_conn(key);
                return;
            }
            self.maybe_credit_update(key);
            self.check_finished(key);
        }
    }

    /// Hands out the epoll changes made necessary since the last call, then closes retired
    /// sockets and re-arms the timeout timer.
    pub fn sync_interest(&mut self, apply: &mut dyn FnMut(FdOp)) {
        for (stream, registered) in self.retired.drain(..) {
            if registered {
                apply(FdOp::Remove {
                    fd: stream.as_raw_fd(),
                });
            }
            drop(stream);
        }
        let want = (!self.listener_paused && self.pending.len() < crate::MAX_PENDING_ACCEPTS)
            .then_some(Interest::READ);
        let fd = self.listener.as_raw_fd();
        let token = self.listener_token;
        diff(fd, token, &mut self.listener_reg, want, apply);
        for fd in std::mem::take(&mut self.dirty) {
            if let Some(conn) = self.by_fd.get(&fd).and_then(|k| self.conns.get_mut(k)) {
                let want = conn.interest();
                diff(fd, fd as u32, &mut conn.registered, want, apply);
            } else if let Some(p) = self.pending.get_mut(&fd) {
                let want = Some(Interest::READ);
                diff(fd, fd as u32, &mut p.registered, want, apply);
            }
        }
        self.rearm_timer();
    }

    /// Whether the connection limit is reached.
    pub fn full(&self) -> bool {
        self.conns.len() >= MAX_CONNECTIONS
    }
}

/// Emits the epoll change that turns `registered` into `want`.
fn diff(
    fd: RawFd,
    token: u32,
    registered: &mut Option<Interest>,
    want: Option<Interest>,
    apply: &mut dyn FnMut(FdOp),
) {
    match (*registered, want) {
        (None, Some(interest)) => apply(FdOp::Add {
            fd,
            token,
            interest,
        }),
        (Some(old), Some(interest)) if old != interest => apply(FdOp::Modify {
            fd,
            token,
            interest,
        }),
        (Some(_), None) => apply(FdOp::Remove { fd }),
        _ => {}
    }
    *registered = want;
}

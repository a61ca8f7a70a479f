//! The vsock device as the transport sees it: features, config space, activation, reset,
//! and the dispatch of event-loop wake-ups to the queue logic and the muxer.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_virtio::{
    read_config_bytes, warn_limited, ActivateError, Activation, GuestMemory, Interrupt, LogLimiter,
    Queue, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::muxer::{FdOp, Muxer, Readiness};
use crate::queues::{serve_rx, serve_tx, Served};
use crate::{NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};

/// Event data of the fixed event sources; host socket fds use their fd number, which is
/// always below these.
pub(crate) const TOKEN_QUEUE0: u32 = 0x8000_0000;
pub(crate) const TOKEN_LISTENER: u32 = TOKEN_QUEUE0 + 3;
pub(crate) const TOKEN_TIMER: u32 = TOKEN_QUEUE0 + 4;
pub(crate) const TOKEN_WAKE: u32 = TOKEN_QUEUE0 + 5;

/// Why a vsock device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit in 32 bits.
    #[error("vsock guest CID {0} is invalid: it must be between 3 and 4294967294 (Linux uses 32-bit CIDs, 0-2 and 2^32-1 are reserved)")]
    InvalidCid(u64),
    /// Something already exists at the socket path.
    #[error("vsock socket path {} already exists; remove it or choose another path", .0.display())]
    PathExists(PathBuf),
    /// The socket path's directory does not exist.
    #[error("cannot create vsock socket {}: its parent directory does not exist", .0.display())]
    NoParentDir(PathBuf),
    /// Binding the socket failed otherwise.
    #[error("cannot create vsock socket {}: {source}", .path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// An eventfd or timerfd could not be created.
    #[error("cannot set up vsock device for {}: {source}", .path.display())]
    Setup {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// The queues of an activated device.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    /// The driver broke a queue: nothing is served until reset.
    broken: bool,
}

/// A virtio-vsock device bridging guest stream sockets to Unix sockets on the host.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    queue_evts: [EventFd; NUM_QUEUES],
    /// Wakes the event loop so it applies interest changes made outside it (reset).
    wake: EventFd,
    pub(crate) muxer: Muxer,
    active: Option<Active>,
    limiter: LogLimiter,
}

impl Vsock {
    /// A device for guest CID `guest_cid`, listening for host clients on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let path = uds_path.to_path_buf();
        if path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists(path));
        }
        let listener = UnixListener::bind(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => VsockError::NoParentDir(path.clone()),
            io::ErrorKind::AddrInUse => VsockError::PathExists(path.clone()),
            _ => VsockError::Bind {
                path: path.clone(),
                source: e,
            },
        })?;
        // The socket file is ours from here on: a `Vsock` removes it when dropped, and a
        // failure before one exists removes it here.
        Self::finish_new(guest_cid, path.clone(), listener).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    fn finish_new(
        guest_cid: u64,
        path: PathBuf,
        listener: UnixListener,
    ) -> Result<Vsock, VsockError> {
        let setup = |source| VsockError::Setup {
            path: path.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(setup)?;
        let timer = TimerFd::new().map_err(|e| setup(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(setup)?;
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(setup);
        let queue_evts = [evt()?, evt()?, evt()?];
        let wake = evt()?;
        Ok(Vsock {
            guest_cid,
            uds_path: path.clone(),
            queue_evts,
            wake,
            muxer: Muxer::new(guest_cid, path, listener, TOKEN_LISTENER, timer),
            active: None,
            limiter: LogLimiter::default(),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host socket path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    pub(crate) fn timer_fd(&self) -> RawFd {
        self.muxer.timer.as_raw_fd()
    }

    #[cfg(test)]
    pub(crate) fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.muxer.timeout = timeout;
    }

    /// Handles one event-loop wake-up for the source `token`, then fills RX buffers with
    /// whatever became ready.
    pub(crate) fn handle_event(&mut self, token: u32, ready: Readiness) {
        match token {
            t if (TOKEN_QUEUE0..TOKEN_QUEUE0 + NUM_QUEUES as u32).contains(&t) => {
                let index = (t - TOKEN_QUEUE0) as usize;
                let _ = self.queue_evts[index].read();
                if index == TX_QUEUE {
                    self.process_tx();
                }
            }
            TOKEN_WAKE => {
                let _ = self.wake.read();
            }
            TOKEN_TIMER => self.muxer.on_timer(),
            TOKEN_LISTENER => self.muxer.on_listener(),
            fd => {
                let fd = fd as RawFd;
                match self.muxer.by_fd.get(&fd) {
                    Some(&key) => self.muxer.on_conn_event(key, ready),
                    None => self.muxer.on_pending(fd, ready),
                }
            }
        }
        self.process_rx();
    }

    /// Hands out pending epoll changes; see [`Muxer::sync_interest`].
    pub(crate) fn sync_interest(&mut self, apply: &mut dyn FnMut(FdOp)) {
        self.muxer.sync_interest(apply);
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let queue = &mut active.queues[TX_QUEUE];
        let result = serve_tx(queue, &active.mem, &mut self.muxer, &mut self.limiter);
        self.finish(TX_QUEUE, result);
    }

    fn process_rx(&mut self) {
        if !self.muxer.has_rx_work() {
            return;
        }
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let queue = &mut active.queues[RX_QUEUE];
        let result = serve_rx(queue, &active.mem, &mut self.muxer, &mut self.limiter);
        self.finish(RX_QUEUE, result);
    }

    /// Interrupts the driver, re-kicks a queue whose budget ran out, or marks the device
    /// broken on a queue error.
    fn finish(&mut self, index: usize, result: Result<Served, virtio_queue::Error>) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match result {
            Ok(served) => {
                if served.notify {
                    active.interrupt.signal_used_queue();
                }
                if served.more {
                    let _ = self.queue_evts[index].write(1);
                }
            }
            Err(e) => {
                active.broken = true;
                warn_limited!(
                    self.limiter,
                    "virtio-vsock: queue unusable until the driver resets the device: {e}"
                );
            }
        }
    }
}

/// Sets `O_NONBLOCK` on `fd`.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: activation.queues.len(),
            });
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
        // The event loop closes the dropped host sockets on its next wake-up.
        let _ = self.wake.write(1);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

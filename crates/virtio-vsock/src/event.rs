//! Event-loop glue: watches the queue eventfds, the listener, the timeout timer and every
//! host socket, dispatches their events to the device, and applies the epoll changes the
//! device asks for afterwards.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use ember_virtio::VirtioDevice;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::conn::Interest;
use crate::device::{Vsock, TOKEN_QUEUE0, TOKEN_TIMER, TOKEN_WAKE};
use crate::muxer::{FdOp, Readiness};

/// Subscribes a [`Vsock`] to the event loop. Registered once when the VM is built; queue
/// notifications before activation are drained and ignored, host clients are accepted from
/// the start.
pub struct VsockSubscriber(pub Arc<Mutex<Vsock>>);

fn event_set(interest: Interest) -> EventSet {
    let mut set = EventSet::empty();
    if interest.read {
        set |= EventSet::IN;
    }
    if interest.write {
        set |= EventSet::OUT;
    }
    set
}

fn apply(ops: &mut EventOps, op: FdOp) {
    let result = match op {
        FdOp::Add {
            fd,
            token,
            interest,
        } => ops.add(Events::with_data_raw(fd, token, event_set(interest))),
        FdOp::Modify {
            fd,
            token,
            interest,
        } => ops.modify(Events::with_data_raw(fd, token, event_set(interest))),
        FdOp::Remove { fd } => ops.remove(Events::empty_raw(fd)),
    };
    if let Err(e) = result {
        log::error!("virtio-vsock: cannot update the event loop ({op:?}): {e:?}");
    }
}

impl MutEventSubscriber for VsockSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let mut dev = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut fixed: Vec<(RawFd, u32)> = dev
            .queue_events()
            .iter()
            .zip(TOKEN_QUEUE0..)
            .map(|(evt, token)| (evt.as_raw_fd(), token))
            .collect();
        fixed.push((dev.wake_fd().as_raw_fd(), TOKEN_WAKE));
        fixed.push((dev.timer_fd(), TOKEN_TIMER));
        for (fd, token) in fixed {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("virtio-vsock: cannot watch event source {token:#x}: {e:?}");
            }
        }
        dev.sync_interest(&mut |op| apply(ops, op));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut dev = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let set = events.event_set();
        let ready = Readiness {
            readable: set.contains(EventSet::IN),
            writable: set.contains(EventSet::OUT),
            hup: set.contains(EventSet::HANG_UP),
            err: set.contains(EventSet::ERROR),
        };
        dev.handle_event(events.data(), ready);
        dev.sync_interest(&mut |op| apply(ops, op));
    }
}

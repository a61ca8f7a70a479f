//! The VM's device event loop: an `event-manager` instance on its own thread. It carries the
//! serial input pump and VM-level events (guest reset requests, the loop's own stop signal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit::{ExitLatch, ExitReason};

/// A subscriber shared with the event loop thread.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// VM-level events: each guest request (reset, power-off) ends the VM with its reason; the
/// stop eventfd ends the loop.
struct VmEvents {
    guest: Vec<(EventFd, ExitReason)>,
    stop: EventFd,
    latch: Arc<ExitLatch>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for VmEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let stop = Events::with_data(&self.stop, self.guest.len() as u32, EventSet::IN);
        let guest = self
            .guest
            .iter()
            .enumerate()
            .map(|(i, (fd, _))| Events::with_data(fd, i as u32, EventSet::IN));
        for events in guest.chain(std::iter::once(stop)) {
            if let Err(e) = ops.add(events) {
                log::error!("event loop: cannot watch VM events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match self.guest.get(events.data() as usize) {
            Some((fd, reason)) => {
                let _ = fd.read();
                self.latch.set(reason.clone());
            }
            None => {
                let _ = self.stop.read();
                self.done.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The event loop, before and after its thread starts.
pub(crate) struct EventLoop {
    manager: Option<EventManager<Subscriber>>,
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
    done: Arc<AtomicBool>,
}

impl EventLoop {
    /// A loop that records `reason` in `latch` when the paired eventfd in `guest` is signalled.
    pub fn new(guest: Vec<(EventFd, ExitReason)>, latch: Arc<ExitLatch>) -> std::io::Result<Self> {
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let done = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(VmEvents {
            guest,
            stop: stop.try_clone()?,
            latch,
            done: done.clone(),
        })));
        Ok(Self {
            manager: Some(manager),
            thread: None,
            stop,
            done,
        })
    }

    /// Adds a device subscriber; only before [`EventLoop::start`].
    pub fn add(&mut self, subscriber: Subscriber) {
        if let Some(m) = self.manager.as_mut() {
            m.add_subscriber(subscriber);
        }
    }

    /// Runs the loop on its own thread.
    pub fn start(&mut self) -> std::io::Result<()> {
        let Some(mut manager) = self.manager.take() else {
            return Ok(());
        };
        let done = self.done.clone();
        self.thread = Some(
            std::thread::Builder::new()
                .name("ember-events".into())
                .spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        if let Err(e) = manager.run() {
                            log::error!("event loop failed: {e:?}");
                            break;
                        }
                    }
                })?,
        );
        Ok(())
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

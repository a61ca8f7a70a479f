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

const RESET: u32 = 0;
const STOP: u32 = 1;

/// VM-level events: guest reset requests end the VM; the stop eventfd ends the loop.
struct VmEvents {
    reset: EventFd,
    stop: EventFd,
    latch: Arc<ExitLatch>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for VmEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [(&self.reset, RESET), (&self.stop, STOP)] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                log::error!("event loop: cannot watch VM events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            RESET => {
                let _ = self.reset.read();
                self.latch.set(ExitReason::Reset);
            }
            STOP => {
                let _ = self.stop.read();
                self.done.store(true, Ordering::SeqCst);
            }
            _ => {}
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
    /// A loop that records a reset in `latch` when `reset` is signalled.
    pub fn new(reset: EventFd, latch: Arc<ExitLatch>) -> std::io::Result<Self> {
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let done = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(VmEvents {
            reset,
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

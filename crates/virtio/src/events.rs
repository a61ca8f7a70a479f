//! Event-loop glue shared by queue-driven devices: a `MutEventSubscriber` that watches a
//! device's queue eventfds and hands each notification to the device.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::VirtioDevice;

/// A device whose only event sources are its queue notifications.
pub trait QueueHandler: VirtioDevice {
    /// The driver notified queue `index` (or the transport kicked it after activation).
    /// Called on the event-loop thread; must not block on the guest.
    fn handle_queue(&mut self, index: usize);
}

/// Subscribes a [`QueueHandler`] to the event loop. Registered once when the VM is built;
/// notifications that arrive before activation are drained and dropped by the device.
pub struct QueueSubscriber<D>(pub Arc<Mutex<D>>);

impl<D: QueueHandler> MutEventSubscriber for QueueSubscriber<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let dev = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (i, evt) in dev.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio: cannot watch queue {i}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut dev = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let index = events.data() as usize;
        if let Some(evt) = dev.queue_events().get(index) {
            // Draining first means a notification racing with processing re-arms the fd.
            let _ = evt.read();
            dev.handle_queue(index);
        }
    }
}

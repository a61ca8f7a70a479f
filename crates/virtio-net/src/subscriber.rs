//! Event-loop glue: the two queue eventfds, always watched, and the backend fd, watched for
//! whatever [`Net::tap_interest`] asks after each event. The loop is level-triggered, so
//! the interest must drop `IN` while a frame waits for guest buffers, or it would spin.

use std::sync::{Arc, Mutex};

use ember_virtio::VirtioDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::backend::Backend;
use crate::device::Net;
use crate::tap::Tap;
use crate::{RX_QUEUE, TX_QUEUE};

const TAP: u32 = 2;

/// Subscribes a [`Net`] to the event loop. Register it once when the VM is built;
/// notifications before activation are drained and ignored.
pub struct NetSubscriber<B: Backend = Tap>(pub Arc<Mutex<Net<B>>>);

/// Brings the backend fd's registration in line with what the device wants.
fn sync<B: Backend>(net: &mut Net<B>, ops: &mut EventOps) {
    let want = net.tap_interest();
    let have = net.registered;
    if want == have {
        return;
    }
    let fd = net.backend().as_raw_fd();
    let result = if want.is_empty() {
        ops.remove(Events::with_data_raw(fd, TAP, have))
    } else if have.is_empty() {
        ops.add(Events::with_data_raw(fd, TAP, want))
    } else {
        ops.modify(Events::with_data_raw(fd, TAP, want))
    };
    match result {
        Ok(()) => net.registered = want,
        Err(e) => log::error!("virtio-net: cannot watch the tap: {e:?}"),
    }
}

impl<B: Backend> MutEventSubscriber for NetSubscriber<B> {
    fn init(&mut self, ops: &mut EventOps) {
        let mut net = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (i, evt) in net.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio-net: cannot watch queue {i}: {e:?}");
            }
        }
        sync(&mut net, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut net = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match events.data() {
            TAP => net.handle_tap(events.event_set()),
            index => {
                let index = index as usize;
                if let Some(evt) = net.queue_events().get(index) {
                    // Draining first means a notification racing with processing re-arms.
                    let _ = evt.read();
                    match index {
                        RX_QUEUE => net.handle_rx_queue(),
                        TX_QUEUE => net.handle_tx_queue(),
                        _ => {}
                    }
                }
            }
        }
        sync(&mut net, ops);
    }
}

//! The entropy device as the transport and the event loop see it.

use ember_virtio::{
    ActivateError, Activation, ActiveQueue, LogLimiter, QueueHandler, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::request::{process_queue, RequestContext};
use crate::QUEUE_SIZE;

/// A virtio-rng device.
pub struct Rng {
    queue_evts: [EventFd; 1],
    active: Option<ActiveQueue>,
    ctx: RequestContext,
    limiter: LogLimiter,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue_evts: [EventFd::new(EFD_NONBLOCK)?],
            active: None,
            ctx: RequestContext::default(),
            limiter: LogLimiter::default(),
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueue::new(activation)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl QueueHandler for Rng {
    fn handle_queue(&mut self, _index: usize) {
        let ctx = &mut self.ctx;
        if let Some(active) = self.active.as_mut() {
            active.serve("virtio-rng", &mut self.limiter, |queue, mem| {
                process_queue(queue, mem, ctx)
            });
        }
    }
}

//! State of an activated single-queue device, shared by the simple devices.

use std::sync::Arc;

use virtio_queue::Queue;

use crate::{warn_limited, ActivateError, Activation, GuestMemory, Interrupt, LogLimiter};

/// An activated device's one queue, its memory and interrupt.
pub struct ActiveQueue {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    /// Set when the driver broke the queue (e.g. an impossible available index): nothing is
    /// served until the driver resets the device.
    broken: bool,
}

impl ActiveQueue {
    /// Takes the single queue of `activation`.
    pub fn new(activation: Activation) -> Result<Self, ActivateError> {
        let got = activation.queues.len();
        let Some(queue) = activation.queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        Ok(Self {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
            broken: false,
        })
    }

    /// Runs `process` (which serves the queue and says whether to interrupt the driver) and
    /// raises the interrupt if asked. A queue error marks the queue broken until reset.
    pub fn serve<F>(&mut self, device: &str, limiter: &mut LogLimiter, process: F)
    where
        F: FnOnce(&mut Queue, &GuestMemory) -> Result<bool, virtio_queue::Error>,
    {
        if self.broken {
            return;
        }
        match process(&mut self.queue, &self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                self.broken = true;
                warn_limited!(
                    limiter,
                    "{device}: queue unusable until the driver resets the device: {e}"
                );
            }
        }
    }
}

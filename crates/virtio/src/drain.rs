//! The request loop shared by devices that complete each chain as soon as they read it.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::GuestMemory;

/// Serves every available chain on `queue` with `serve`, which returns the chain's used
/// length. Notifications are disabled while draining and re-checked after re-enabling them,
/// so a chain the driver adds meanwhile is not missed. Returns whether the driver must be
/// interrupted, or the queue error that makes the queue unusable until reset.
pub fn drain_queue<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut serve: F,
) -> Result<bool, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    let mut completed = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let used = serve(chain);
            queue.add_used(mem, head, used)?;
            completed = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(completed && queue.needs_notification(mem)?)
}

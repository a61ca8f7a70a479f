//! The block device as the transport and the event loop see it.

use ember_virtio::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, LogLimiter, QueueHandler,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::disk::DiskFile;
use crate::request::{drive_id, process_queue, DriveId, RequestContext};
use crate::QUEUE_SIZE;

/// `virtio_blk_config` up to `seg_max`: capacity (u64), size_max (u32), seg_max (u32).
const CONFIG_LEN: usize = 16;

/// A virtio-blk device backed by a [`DiskFile`].
pub struct Block {
    disk: DiskFile,
    id: DriveId,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 1],
    active: Option<ActiveQueue>,
    ctx: RequestContext,
    limiter: LogLimiter,
}

impl Block {
    /// A device serving `disk`, answering `GET_ID` with `id` (truncated to 20 bytes).
    pub fn new(disk: DiskFile, id: &str) -> std::io::Result<Self> {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        // seg_max: a request's data segments, leaving room for header and status.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        Ok(Self {
            disk,
            id: drive_id(id),
            features,
            config,
            queue_evts: [EventFd::new(EFD_NONBLOCK)?],
            active: None,
            ctx: RequestContext::default(),
            limiter: LogLimiter::default(),
        })
    }

    /// The backing disk.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
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

impl QueueHandler for Block {
    fn handle_queue(&mut self, _index: usize) {
        let (disk, id, ctx) = (&self.disk, &self.id, &mut self.ctx);
        if let Some(active) = self.active.as_mut() {
            active.serve("virtio-blk", &mut self.limiter, |queue, mem| {
                process_queue(queue, mem, disk, id, ctx)
            });
        }
    }
}

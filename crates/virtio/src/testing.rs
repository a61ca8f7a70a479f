//! The driver side of a split queue, for device crates' queue-level tests (feature
//! `test-utils`). Built on virtio-queue's mock rings, with a used ring of its own: the mock
//! places its used ring over the second half of its available ring for small queues
//! (`SplitQueueRing::end` counts elements, not bytes).

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;

/// Where [`Driver::new`] puts its used ring (the mock's rings start at 0).
pub const USED_RING: u64 = 0x400;

/// Writes `data` at guest address `addr`; panics outside memory.
pub fn put(mem: &GuestMemory, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).unwrap();
}

/// Reads `len` bytes at guest address `addr`; panics outside memory.
pub fn get(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// A raw split descriptor.
pub fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// One buffer of a chain: (address, length, device-writable).
pub type Seg = (u64, u32, bool);

/// A device-readable buffer.
pub fn r(addr: u64, len: u32) -> Seg {
    (addr, len, false)
}

/// A device-writable buffer.
pub fn w(addr: u64, len: u32) -> Seg {
    (addr, len, true)
}

/// A mock driver: descriptor table and available ring at guest address 0, used ring at
/// [`USED_RING`].
pub struct Driver<'a> {
    vq: MockSplitQueue<'a, GuestMemory>,
    used: UsedRing<'a, GuestMemory>,
    size: u16,
    start: u16,
    avail: u16,
    free: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries whose indexes start at `start` (to exercise wrap-around).
    pub fn new(mem: &'a GuestMemory, size: u16, start: u16) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(0), size);
        let used = UsedRing::new(mem, GuestAddress(USED_RING), size);
        vq.avail().idx().store(start);
        used.idx().store(start);
        Self {
            vq,
            used,
            size,
            start,
            avail: start,
            free: 0,
        }
    }

    /// The device side of this queue, ready to serve.
    pub fn queue(&self) -> Queue {
        let mut q: Queue = self.vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_next_avail(self.start);
        q.set_next_used(self.start);
        q
    }

    /// Stores descriptor `index` of the table.
    pub fn set_desc(&self, index: u16, d: RawDescriptor) {
        self.vq.desc_table().store(index, d).unwrap();
    }

    /// Writes `segs` as one linked chain in the next table slots and offers it.
    pub fn push(&mut self, segs: &[Seg]) -> u16 {
        let head = self.free;
        for (i, &(addr, len, write)) in segs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let more = if i + 1 < segs.len() {
                VRING_DESC_F_NEXT as u16
            } else {
                0
            };
            let flags = if write {
                VRING_DESC_F_WRITE as u16 | more
            } else {
                more
            };
            self.set_desc(index, raw(addr, len, flags, (index + 1) % self.size));
        }
        self.free = (head + segs.len() as u16) % self.size;
        self.offer(head);
        head
    }

    /// Puts `head` in the available ring and publishes it.
    pub fn offer(&mut self, head: u16) {
        let slot = usize::from(self.avail % self.size);
        self.vq.avail().ring().ref_at(slot).unwrap().store(head);
        self.set_avail_idx(self.avail.wrapping_add(1));
    }

    /// Publishes an available index (possibly an impossible one).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail = idx;
        self.vq.avail().idx().store(idx);
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.used.idx().load()
    }

    /// Used entry number `n` (a free-running index) as (id, len).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let slot = usize::from(n % self.size);
        let e = self.used.ring().ref_at(slot).unwrap().load();
        (e.id(), e.len())
    }

    /// The used length of the latest completion, checking it is for `head`.
    pub fn last_used(&self, head: u16) -> u32 {
        let (id, len) = self.used(self.used_idx().wrapping_sub(1));
        assert_eq!(id, u32::from(head));
        len
    }

    /// Where the driver asks for an interrupt (with `VIRTIO_RING_F_EVENT_IDX`).
    pub fn used_event(&self) -> u64 {
        self.vq.avail_addr().0 + 4 + 2 * u64::from(self.size)
    }
}

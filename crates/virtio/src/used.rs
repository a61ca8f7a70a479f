//! Completing several chains as one: a driver must never see part of a group that belongs
//! together, such as a mergeable virtio-net frame spread over several receive buffers (Linux
//! drops the frame when it finds fewer buffers than the header announces). virtio-queue
//! publishes the used index on every `add_used`, so groups go through [`add_used_batch`],
//! and [`UsedNotifier`] decides about interrupts for them.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Error, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::GuestMemory;

/// Size of the used ring's header (flags and index) and of one element.
const USED_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;

/// Adds `elems` (head index, used length) to the used ring and publishes them with one
/// update of the used index, after all of them are written.
pub fn add_used_batch(
    queue: &mut Queue,
    mem: &GuestMemory,
    elems: &[(u16, u32)],
) -> Result<(), Error> {
    let Some((&(last_head, last_len), rest)) = elems.split_last() else {
        return Ok(());
    };
    let size = queue.size();
    let base = queue.next_used();
    for (i, &(head, len)) in rest.iter().enumerate() {
        if head >= size {
            return Err(Error::InvalidDescriptorIndex);
        }
        let slot = u64::from(base.wrapping_add(i as u16) % size);
        let addr = GuestAddress(queue.used_ring())
            .checked_add(USED_HEADER + slot * USED_ELEM)
            .ok_or(Error::AddressOverflow)?;
        let mut elem = [0u8; USED_ELEM as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr).map_err(Error::GuestMemory)?;
    }
    // The last element goes through virtio-queue, whose release store of the index makes
    // the elements written above visible with it.
    queue.set_next_used(base.wrapping_add(rest.len() as u16));
    queue.add_used(mem, last_head, last_len)
}

/// Whether to interrupt the driver, counting every element added since the last check,
/// including those of [`add_used_batch`] (virtio-queue's own count sees one per batch).
#[derive(Debug, Default)]
pub struct UsedNotifier {
    /// The used index at the last check; a fresh queue starts at 0.
    last: Wrapping<u16>,
}

impl UsedNotifier {
    /// True if the driver asked to be interrupted for any element added since the last call
    /// (`VIRTIO_RING_F_EVENT_IDX`), or always when event indexes are off.
    pub fn needs_notification(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, Error> {
        let new = Wrapping(queue.next_used());
        let old = std::mem::replace(&mut self.last, new);
        // Also keeps virtio-queue's count of added elements in step.
        let plain = queue.needs_notification(mem)?;
        if !queue.event_idx_enabled() {
            return Ok(plain);
        }
        fence(Ordering::SeqCst);
        let addr = GuestAddress(queue.avail_ring())
            .checked_add(4 + 2 * u64::from(queue.size()))
            .ok_or(Error::AddressOverflow)?;
        let used_event: u16 = mem.read_obj(addr).map_err(Error::GuestMemory)?;
        let used_event = Wrapping(u16::from_le(used_event));
        Ok(new - used_event - Wrapping(1) < new - old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{put, w, Driver};
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestAddress;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn a_batch_is_published_at_once_and_in_order() {
        let mem = memory();
        let mut drv = Driver::new(&mem, 16, 65534);
        let mut q = drv.queue();
        let heads: Vec<u16> = (0..3)
            .map(|i| drv.push(&[w(0x8000 + i * 0x100, 64)]))
            .collect();
        for _ in 0..3 {
            q.iter(&mem).unwrap().next().unwrap();
        }
        add_used_batch(
            &mut q,
            &mem,
            &[(heads[0], 10), (heads[1], 20), (heads[2], 30)],
        )
        .unwrap();
        // The index wrapped around from 65534 and moved by three in one store.
        assert_eq!(drv.used_idx(), 1);
        let got: Vec<_> = (0..3).map(|i| drv.used(65534u16.wrapping_add(i))).collect();
        assert_eq!(got, [(0, 10), (1, 20), (2, 30)]);
        assert!(add_used_batch(&mut q, &mem, &[]).is_ok());
        assert!(matches!(
            add_used_batch(&mut q, &mem, &[(99, 0), (0, 0)]),
            Err(Error::InvalidDescriptorIndex)
        ));
    }

    #[test]
    fn notification_counts_every_element_of_a_batch() {
        let mem = memory();
        let mut drv = Driver::new(&mem, 16, 0);
        let mut q = drv.queue();
        q.set_event_idx(true);
        let mut n = UsedNotifier::default();
        let heads: Vec<u16> = (0..4)
            .map(|i| drv.push(&[w(0x8000 + i * 0x100, 64)]))
            .collect();
        for _ in 0..4 {
            q.iter(&mem).unwrap().next().unwrap();
        }
        // The driver wants an interrupt once the element at index 1 is used: inside the batch.
        put(&mem, drv.used_event(), &1u16.to_le_bytes());
        add_used_batch(&mut q, &mem, &[(heads[0], 1), (heads[1], 1), (heads[2], 1)]).unwrap();
        assert!(n.needs_notification(&mut q, &mem).unwrap());
        // Nothing new past the event index: no interrupt.
        add_used_batch(&mut q, &mem, &[(heads[3], 1)]).unwrap();
        assert!(!n.needs_notification(&mut q, &mem).unwrap());
    }
}

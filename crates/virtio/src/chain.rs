//! Descriptor chains as two lists of guest memory segments: what the device may read and
//! what it may write. Loaded into reusable storage, so serving a request allocates nothing
//! once the lists have grown to the queue's longest chain.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as GuestMemoryTrait};

use crate::GuestMemory;

/// One descriptor's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A chain the device must not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The spec puts all device-readable descriptors before the device-writable ones.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
}

/// The readable and writable segments of one descriptor chain.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
}

impl ChainBuffers {
    /// Replaces the contents with `chain`'s descriptors. The chain iterator stops at the
    /// queue size (so a looping chain ends) and at the first descriptor it cannot read, so a
    /// malformed chain shows up as a short one.
    pub fn load<M>(&mut self, chain: DescriptorChain<M>) -> Result<(), ChainError>
    where
        M: Deref,
        M::Target: GuestMemoryTrait,
    {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        for desc in chain {
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                self.writable.push(seg);
                self.writable_len += u64::from(seg.len);
            } else if !self.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            } else {
                self.readable.push(seg);
                self.readable_len += u64::from(seg.len);
            }
        }
        Ok(())
    }

    /// Device-readable segments, in order.
    pub fn readable(&self) -> &[Segment] {
        &self.readable
    }

    /// Device-writable segments, in order.
    pub fn writable(&self) -> &[Segment] {
        &self.writable
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }
}

/// The pieces of `segs` covering bytes `[start, start + len)` of their concatenation, as
/// `(address, length)` pairs; stops early if the segments are shorter.
pub fn pieces(
    segs: &[Segment],
    start: u64,
    len: u64,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let mut skip = start;
    let mut left = len;
    segs.iter().filter_map(move |seg| {
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            return None;
        }
        if left == 0 {
            return None;
        }
        let take = (seg_len - skip).min(left);
        let Some(addr) = seg.addr.checked_add(skip) else {
            // Nothing after an address that wraps is contiguous with what came before.
            left = 0;
            return None;
        };
        skip = 0;
        left -= take;
        Some((addr, take as usize))
    })
}

/// Copies bytes `[start, start + buf.len())` of `segs` into `buf`; false if any byte is
/// missing or outside guest memory.
pub fn read_bytes(mem: &GuestMemory, segs: &[Segment], start: u64, buf: &mut [u8]) -> bool {
    let mut done = 0;
    for (addr, len) in pieces(segs, start, buf.len() as u64) {
        if mem.read_slice(&mut buf[done..done + len], addr).is_err() {
            return false;
        }
        done += len;
    }
    done == buf.len()
}

/// Copies `data` into bytes `[start, start + data.len())` of `segs`; false if any byte is
/// missing or outside guest memory.
pub fn write_bytes(mem: &GuestMemory, segs: &[Segment], start: u64, data: &[u8]) -> bool {
    let mut done = 0;
    for (addr, len) in pieces(segs, start, data.len() as u64) {
        if mem.write_slice(&data[done..done + len], addr).is_err() {
            return false;
        }
        done += len;
    }
    done == data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn pieces_span_segments() {
        let segs = [seg(0x1000, 16), seg(0x2000, 0), seg(0x3000, 8)];
        let all: Vec<_> = pieces(&segs, 10, 10).collect();
        assert_eq!(
            all,
            vec![(GuestAddress(0x100a), 6), (GuestAddress(0x3000), 4)]
        );
        assert_eq!(pieces(&segs, 24, 5).count(), 0);
        assert_eq!(pieces(&segs, 0, 0).count(), 0);
        // A segment whose address wraps ends the pieces; later ones are not shifted into place.
        let wrapping = [seg(0x1000, 4), seg(u64::MAX - 1, 8), seg(0x3000, 8)];
        assert_eq!(pieces(&wrapping, 8, 8).collect::<Vec<_>>(), vec![]);
    }

    #[test]
    fn copies_fail_outside_memory_or_past_the_end() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [seg(0x1000, 4), seg(0x2000, 4)];
        assert!(write_bytes(&mem, &segs, 2, &[1, 2, 3, 4]));
        let mut buf = [0u8; 4];
        assert!(read_bytes(&mem, &segs, 2, &mut buf));
        assert_eq!(buf, [1, 2, 3, 4]);
        assert!(!read_bytes(&mem, &segs, 6, &mut buf));
        let outside = [seg(0xfffe, 4)];
        assert!(!write_bytes(&mem, &outside, 0, &[0; 4]));
    }
}

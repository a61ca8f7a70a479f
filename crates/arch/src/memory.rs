//! Guest RAM: where it lives in the guest physical address space and how it is mapped.

use ember_memory::{map_ram, GuestRam};
use vm_memory::GuestAddress;

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Smallest guest we agree to build: enough for the boot structures and a tiny kernel.
pub const MIN_MEM_SIZE: u64 = 2 << 20;

/// Errors from guest memory setup.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEM_SIZE`].
    #[error("guest memory of {0} bytes is too small (minimum is 2 MiB)")]
    TooSmall(u64),
    /// The requested size is not a multiple of the page size.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The requested size exceeds what the guest physical address space can hold.
    #[error("guest memory of {size} MiB does not fit the guest physical address space ({max} MiB at most)")]
    TooLarge {
        /// Requested size in MiB.
        size: u64,
        /// Largest size in MiB.
        max: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Mmap(u64, std::io::Error),
}

/// RAM regions (start, length) for a guest with `size` bytes of memory: everything below the
/// 32-bit MMIO hole, and the rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if size > low {
        regions.push((GuestAddress(MMIO_HOLE_END), size - low));
    }
    regions
}

/// Maps `size` bytes of guest RAM, after validating it against `max_phys_bits` (the guest
/// physical address width). The mapping is anonymous and lazy (untouched pages cost the host
/// nothing), 2 MiB-aligned and, with `huge_pages`, backed by transparent huge pages where the
/// host allows (`ember_memory::map_region`).
pub fn create_guest_memory(
    size: u64,
    max_phys_bits: u8,
    huge_pages: bool,
) -> Result<GuestRam, MemoryError> {
    if size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(size));
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned(size));
    }
    let limit = 1u64 << max_phys_bits.min(52);
    let regions = ram_regions(size);
    let (last_start, last_len) = *regions.last().expect("at least one region");
    if last_start
        .0
        .checked_add(last_len)
        .is_none_or(|end| end > limit)
    {
        let max = limit - (MMIO_HOLE_END - MMIO_HOLE_START);
        return Err(MemoryError::TooLarge {
            size: size >> 20,
            max: max >> 20,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> =
        regions.iter().map(|(a, l)| (*a, *l as usize)).collect();
    map_ram(&ranges, huge_pages).map_err(|e| MemoryError::Mmap(size >> 20, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_HOLE_END), (4 << 30) - MMIO_HOLE_START)
        );
        let mem = create_guest_memory(4 << 30, 39, true).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(!mem.address_in_range(GuestAddress(MMIO_HOLE_START)));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(matches!(
            create_guest_memory(0, 39, true),
            Err(MemoryError::TooSmall(0))
        ));
        assert!(matches!(
            create_guest_memory((64 << 20) + 1, 39, true),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            create_guest_memory(1 << 40, 39, true),
            Err(MemoryError::TooLarge { .. })
        ));
    }
}

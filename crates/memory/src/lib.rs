//! Guest RAM mappings.
//!
//! KVM maps guest memory with 2 MiB pages (fewer nested-paging faults, fewer TLB misses) only
//! where the host backs it with a huge page *and* the guest-physical and host-virtual addresses
//! agree modulo 2 MiB. A plain `mmap` gives no such alignment (before Linux 6.7), so Ember maps
//! each RAM region itself at a 2 MiB-aligned address and asks for transparent huge pages
//! (`MADV_HUGEPAGE`, which matters on hosts whose THP mode is `madvise`). Without huge pages
//! the region is marked `MADV_NOHUGEPAGE`, so that hosts whose THP mode is `always` honour the
//! choice too.
//!
//! vm-memory does not unmap a mapping it did not create; the [`RamMapping`] stored in the
//! region's bitmap slot does, when the region is dropped. It tracks no dirty pages.

use std::io;

use vm_memory::bitmap::{Bitmap, NewBitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Guest memory as Ember uses it everywhere.
pub type GuestRam = vm_memory::GuestMemoryMmap<RamMapping>;

/// One region of [`GuestRam`].
pub type RamRegion = GuestRegionMmap<RamMapping>;

const HUGE_PAGE: usize = 2 << 20;

/// Owns an anonymous mapping made by [`map_region`] and unmaps it on drop. The default value
/// owns nothing (regions that vm-memory mapped itself, as in tests).
#[derive(Debug, Default)]
pub struct RamMapping {
    addr: usize,
    len: usize,
}

impl Drop for RamMapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: `addr..addr + len` is the mapping `map_region` created for this owner
            // alone; the region that used it is being dropped, so nothing refers to it anymore.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }
}

impl WithBitmapSlice<'_> for RamMapping {
    type S = ();
}

impl Bitmap for RamMapping {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

impl NewBitmap for RamMapping {
    fn with_len(_len: usize) -> Self {
        Self::default()
    }
}

/// Maps `len` bytes (a multiple of 4 KiB) of lazily allocated, zeroed memory at a 2 MiB-aligned
/// host address, as the guest RAM region starting at `start`, backed by transparent huge pages
/// if `huge_pages` and the host allow. Untouched pages cost nothing.
pub fn map_region(start: GuestAddress, len: usize, huge_pages: bool) -> io::Result<RamRegion> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing; no existing
    // memory is affected.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let addr = raw.next_multiple_of(HUGE_PAGE);
    let head = addr - raw;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping just created and outside `addr..addr + len`,
    // which is all that is kept.
    unsafe {
        if head != 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail != 0 {
            libc::munmap((addr + len) as *mut libc::c_void, tail);
        }
    }
    let owner = RamMapping { addr, len };
    let advice = if huge_pages {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: `addr..addr + len` is a private anonymous mapping we own; advice only changes how
    // the kernel backs it. Failure (a kernel without THP) is harmless.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    // SAFETY: `addr..addr + len` is a live mapping, owned from here on by `owner`, which the
    // region keeps (and drops, unmapping it) for as long as the region exists.
    let builder = unsafe {
        MmapRegionBuilder::new_with_bitmap(len, owner)
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .with_raw_mmap_pointer(addr as *mut u8)
    };
    let region = builder
        .build()
        .map_err(|e| io::Error::other(e.to_string()))?;
    GuestRegionMmap::new(region, start)
        .ok_or_else(|| io::Error::other("guest region wraps around the address space"))
}

/// Guest RAM made of `regions` (start, length), each mapped by [`map_region`].
pub fn map_ram(regions: &[(GuestAddress, usize)], huge_pages: bool) -> io::Result<GuestRam> {
    let mapped = regions
        .iter()
        .map(|&(start, len)| map_region(start, len, huge_pages))
        .collect::<io::Result<Vec<_>>>()?;
    GuestRam::from_regions(mapped).map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn regions_are_aligned_usable_and_unmapped_on_drop() {
        let mem = map_ram(
            &[
                (GuestAddress(0), 6 << 20),
                (GuestAddress(1 << 32), 4096 * 3),
            ],
            true,
        )
        .unwrap();
        let addrs: Vec<usize> = mem
            .iter()
            .map(|r| {
                r.get_host_address(vm_memory::MemoryRegionAddress(0))
                    .unwrap() as usize
            })
            .collect();
        for a in &addrs {
            assert_eq!(a % HUGE_PAGE, 0);
        }
        mem.write_obj(0x1234_5678u32, GuestAddress((6 << 20) - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((6 << 20) - 4)).unwrap(),
            0x1234_5678
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(1 << 32)).unwrap(), 0);
        assert!(mem.read_obj::<u32>(GuestAddress(6 << 20)).is_err());
        drop(mem);
        // The first region's pages are gone: mincore fails with ENOMEM on unmapped ranges.
        let mut vec = [0u8; 1];
        // SAFETY: mincore only inspects the page tables; `vec` has room for one page.
        let rc = unsafe { libc::mincore(addrs[0] as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
        assert_eq!(rc, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOMEM)
        );
    }

    /// The `VmFlags` line of the mapping that starts at `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        assert!(lines.next().is_some(), "no mapping starts at {header}");
        let flags = lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("VmFlags line");
        flags.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn huge_page_advice_follows_the_choice() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        for (huge, flag, not) in [(true, "hg", "nh"), (false, "nh", "hg")] {
            let region = map_region(GuestAddress(0), 4 << 20, huge).unwrap();
            let addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap() as usize;
            let flags = vm_flags(addr);
            assert!(flags.iter().any(|f| f == flag), "huge={huge}: {flags:?}");
            assert!(!flags.iter().any(|f| f == not), "huge={huge}: {flags:?}");
        }
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(map_region(GuestAddress(0), usize::MAX - 4095, true).is_err());
    }
}

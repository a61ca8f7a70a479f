//! Kernel and initrd loading, and the boot information a kernel reads at entry: the Linux
//! "zero page" (`boot_params`) or the PVH `hvm_start_info`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use ember_memory::GuestRam;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::*;
use crate::memory::ram_regions;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const HDRS_MAGIC: u32 = 0x5372_6448;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `xloadflags` bit: the kernel has a 64-bit entry point at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1;

/// Errors from loading a kernel or initrd and writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel image failed.
    #[error("cannot read kernel image: {0}")]
    ReadKernel(std::io::Error),
    /// The file is neither an ELF nor a bzImage.
    #[error("kernel image is neither an x86_64 ELF nor a bzImage")]
    UnknownKernelFormat,
    /// linux-loader rejected the image.
    #[error("invalid kernel image: {0}")]
    InvalidKernel(linux_loader::loader::Error),
    /// A bzImage without a 64-bit entry point.
    #[error("bzImage does not support the 64-bit boot protocol (boot protocol {0:#x})")]
    No64BitEntry(u16),
    /// Reading the initrd failed.
    #[error("cannot read initrd: {0}")]
    ReadInitrd(std::io::Error),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory (at most {room} bytes free above the kernel)")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Space available.
        room: u64,
    },
    /// The kernel command line is too long.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Length including the terminator.
        len: usize,
        /// Limit including the terminator.
        max: usize,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot information into guest memory: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
    /// Too many memory map entries for the boot structure.
    #[error("too many memory map entries")]
    TooManyMemoryRegions,
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, `%rsi` = `boot_params`.
    Linux64,
}

/// Where and how to start the boot vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// Guest physical address of the first instruction.
    pub addr: GuestAddress,
    /// Protocol used at entry.
    pub mode: EntryMode,
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point and protocol.
    pub entry: EntryPoint,
    /// First byte past the kernel image in guest memory.
    pub end: u64,
    /// The bzImage setup header, when the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF (PVH entry preferred) or bzImage kernel into `mem`.
pub fn load_kernel(mem: &GuestRam, image: &mut File) -> Result<LoadedKernel, BootError> {
    let mut magic = [0u8; 4];
    image
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    if let Err(e) = image.read_exact(&mut magic) {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Err(BootError::UnknownKernelFormat),
            _ => Err(BootError::ReadKernel(e)),
        };
    }
    let himem = Some(GuestAddress(HIMEM_START));
    if magic == *b"\x7fELF" {
        let res = Elf::load(mem, None, image, himem).map_err(BootError::InvalidKernel)?;
        let entry = match res.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => EntryPoint {
                addr,
                mode: EntryMode::Pvh,
            },
            _ => EntryPoint {
                addr: res.kernel_load,
                mode: EntryMode::Linux64,
            },
        };
        return Ok(LoadedKernel {
            entry,
            end: res.kernel_end,
            setup_header: None,
        });
    }
    let res = match BzImage::load(mem, None, image, himem) {
        Ok(res) => res,
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        )) => return Err(BootError::UnknownKernelFormat),
        Err(e) => return Err(BootError::InvalidKernel(e)),
    };
    let hdr = res.setup_header.ok_or(BootError::UnknownKernelFormat)?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry(hdr.version));
    }
    Ok(LoadedKernel {
        entry: EntryPoint {
            addr: res.kernel_load.unchecked_add(0x200),
            mode: EntryMode::Linux64,
        },
        end: res.kernel_end,
        setup_header: Some(hdr),
    })
}

/// Total guest RAM in bytes.
fn ram_size(mem: &GuestRam) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}

/// Top of RAM below the 32-bit MMIO hole.
fn low_mem_end(mem: &GuestRam) -> u64 {
    ram_size(mem).min(MMIO_HOLE_START)
}

/// Loads an initrd at the highest page-aligned address below the top of low memory (and below
/// the kernel's `initrd_addr_max`), above the kernel. Returns its address and size.
pub fn load_initrd(
    mem: &GuestRam,
    kernel: &LoadedKernel,
    initrd: &mut File,
) -> Result<(GuestAddress, u64), BootError> {
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(BootError::ReadInitrd)?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadInitrd)?;
    let mut top = low_mem_end(mem);
    if let Some(hdr) = kernel.setup_header {
        if hdr.initrd_addr_max != 0 {
            top = top.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let floor = kernel.end.max(HIMEM_START);
    let room = top.saturating_sub(floor);
    if size > room {
        return Err(BootError::InitrdTooLarge { size, room });
    }
    let addr = (top - size) & !0xfff;
    if addr < floor {
        return Err(BootError::InitrdTooLarge { size, room });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => BootError::ReadInitrd(io),
            other => BootError::GuestMemory(other),
        })?;
    Ok((GuestAddress(addr), size))
}

/// Everything the kernel needs to find at entry besides its own image.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo<'a> {
    /// Kernel command line, without terminator.
    pub cmdline: &'a [u8],
    /// Initrd location and size.
    pub initrd: Option<(GuestAddress, u64)>,
    /// Address of the ACPI RSDP.
    pub rsdp: GuestAddress,
}

/// Writes the command line and the boot structure matching `kernel.entry.mode`.
pub fn write_boot_info(
    mem: &GuestRam,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<(), BootError> {
    let max = match kernel.setup_header {
        Some(hdr) if hdr.cmdline_size != 0 => (hdr.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
        _ => CMDLINE_MAX_SIZE,
    };
    let len = info.cmdline.len() + 1;
    if len > max {
        return Err(BootError::CmdlineTooLong { len, max });
    }
    let mut bytes = info.cmdline.to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(BootError::GuestMemory)?;
    match kernel.entry.mode {
        EntryMode::Pvh => write_pvh_info(mem, info),
        EntryMode::Linux64 => write_zero_page(mem, kernel, info, len),
    }
}

/// The memory map both boot protocols describe: (start, size, type).
fn memory_map(mem: &GuestRam) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    map.push((ACPI_START, ACPI_SIZE, E820_RESERVED));
    for (start, len) in ram_regions(ram_size(mem)) {
        let (start, len) = if start.0 == 0 {
            (HIMEM_START, len.saturating_sub(HIMEM_START))
        } else {
            (start.0, len)
        };
        if len > 0 {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

fn write_zero_page(
    mem: &GuestRam,
    kernel: &LoadedKernel,
    info: &BootInfo,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = 0x0100_0000;
        }
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp.raw_value();
    let map = memory_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyMemoryRegions);
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::GuestMemory)
}

fn write_pvh_info(mem: &GuestRam, info: &BootInfo) -> Result<(), BootError> {
    let map = memory_map(mem);
    if map.len() > PVH_MEMMAP_MAX {
        return Err(BootError::TooManyMemoryRegions);
    }
    let mut addr = GuestAddress(PVH_MEMMAP_START);
    for (start, size, kind) in &map {
        let entry = hvm_memmap_table_entry {
            addr: *start,
            size: *size,
            type_: *kind,
            reserved: 0,
        };
        mem.write_obj(entry, addr).map_err(BootError::GuestMemory)?;
        addr = addr.unchecked_add(entry.as_slice().len() as u64);
    }
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: info.rsdp.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((initrd, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.raw_value(),
            size,
            ..Default::default()
        };
        mem.write_obj(module, addr)
            .map_err(BootError::GuestMemory)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = addr.raw_value();
    }
    mem.write_obj(start_info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::GuestMemory)
}

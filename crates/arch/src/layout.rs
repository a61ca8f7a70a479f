//! Guest physical memory layout shared by the boot code, ACPI and the device model.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)
//! 0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start_info + memmap
//! 0x0000_7000  Linux zero page
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4
//! 0x0000_a000  PDPT
//! 0x0000_b000  PD (4 pages: first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  end of low RAM in the e820 map; MP floating pointer (16 bytes)
//! 0x000a_0000  legacy VGA window: unused, left alone
//! 0x000c_0000  MP configuration table (up to 8 KiB, in the option-ROM area)
//! 0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  kernel (1 MiB)
//! 0xc000_0000  32-bit MMIO hole up to 4 GiB
//! ```
//!
//! Guest memory is mapped without holes below 1 MiB, but from `EBDA_START` to 1 MiB nothing is
//! RAM in the e820 map (only the ACPI area is listed, as reserved), so the guest never
//! allocates over the MP and ACPI tables.

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after `hvm_start_info`.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Maximum number of PVH memory map entries.
pub const PVH_MEMMAP_MAX: usize = 64;
/// Linux boot protocol `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories identity-mapping the low 4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum kernel command line length, including the NUL terminator.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional low memory (EBDA starts here).
pub const EBDA_START: u64 = 0x9fc00;
/// MP configuration table (Intel MultiProcessor Specification 1.4). The floating pointer sits
/// at `EBDA_START`, in the last KiB of base memory where guests scan for it, but a table for
/// 254 CPUs (over 5 KiB) does not fit in the 1 KiB below `0xa0000`; the floating pointer
/// points here instead, into the option-ROM area that nothing else in Ember uses.
pub const MPTABLE_START: u64 = 0xc_0000;
/// Room reserved for the MP configuration table.
pub const MPTABLE_SIZE: u64 = 0x2000;
/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// Size of the ACPI area.
pub const ACPI_SIZE: u64 = 0x20000;
/// Where the kernel is loaded and where RAM above the legacy area starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM beyond this point is moved above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Device MMIO windows (virtio-mmio and friends) are allocated from here.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// End of the device MMIO window range (exclusive).
pub const MMIO_DEVICES_END: u64 = 0xfec0_0000;
/// IO-APIC base address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// Inputs of KVM's in-kernel IO-APIC (KVM_IOAPIC_NUM_PINS); GSI n is wired to pin n.
pub const IOAPIC_PINS: u32 = 24;
/// Legacy IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// First GSI handed out to devices (after the legacy ISA IRQs).
pub const IRQ_DEVICES_START: u32 = 5;
/// Last GSI available on the in-kernel IO-APIC.
pub const IRQ_DEVICES_END: u32 = 23;
/// ACPI sleep control register (hardware-reduced ACPI): the guest writes SLP_TYP/SLP_EN here
/// to power off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// SLP_TYP value the DSDT's `_S5_` object gives for soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// Highest guest physical address KVM lets us map with 4-level paging (46 bits is conservative).
pub const MAX_GUEST_PHYS: u64 = 1 << 46;

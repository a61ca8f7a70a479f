//! ACPI tables for Ember guests.
//!
//! The guest sees a *hardware-reduced* ACPI platform: no PM timer, no SCI, no GPE or PM1
//! blocks and no FACS, only what a microVM has. Everything lives in
//! `[ACPI_START, ACPI_START + ACPI_SIZE)`, 16-byte aligned, in this order:
//!
//! ```text
//! RSDP (ACPI_START, where Linux also scans for it)
//! XSDT -> FADT, MADT
//! FADT -> X_DSDT
//! MADT     Local APICs, IO-APIC, LINT1 NMI
//! DSDT     \_SB_.COM1 and one \_SB_.Vxxx per virtio-mmio device
//! ```
//!
//! The hardware-reduced flag matters on Linux: it replaces the 8259 with `null_legacy_pic`
//! and skips the PIT/HPET timer setup, so the kernel never probes the PIC, never runs the
//! IRQ0 "check_timer" dance, and takes every interrupt through the IO-APIC using the
//! trigger/polarity given in the DSDT `_CRS`.

mod dsdt;
mod madt;
#[cfg(test)]
mod tests;

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{ACPI_SIZE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START};

/// OEM ID in every table header and in the RSDP.
const OEM_ID: [u8; 6] = *b"EMBER ";
/// OEM table ID. The spec wants the FADT's to match the XSDT's; all tables share it.
const OEM_TABLE_ID: [u8; 8] = *b"EMBERVM ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of every table in guest memory (the RSDP needs 16).
const TABLE_ALIGN: u64 = 16;

/// IAPC_BOOT_ARCH bit: the VGA range must not be probed (there is no VGA).
const IAPC_NO_VGA: u16 = 1 << 2;
/// IAPC_BOOT_ARCH bit: MSI must not be enabled (there is no PCI).
const IAPC_NO_MSI: u16 = 1 << 3;
/// IAPC_BOOT_ARCH bit: the OS must not enable PCIe ASPM (there is no PCIe).
const IAPC_NO_ASPM: u16 = 1 << 4;
/// IAPC_BOOT_ARCH bit: there is no CMOS RTC at ports 0x70/0x71.
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// What the FADT reports in IAPC_BOOT_ARCH.
///
/// LEGACY_DEVICES (bit 0) is clear: COM1 is described in the DSDT, nothing needs probing,
/// and Linux only uses the bit to skip PnP BIOS. 8042 (bit 1) is clear too: the VMM's i8042
/// only implements the reset command, so Linux's i8042 driver must not probe it (it would
/// wait for a self-test reply that never comes). `reboot=k` and the FADT reset register
/// below write port 0x64 directly and do not depend on this bit.
const IAPC_BOOT_ARCH: u16 = IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_ASPM | IAPC_NO_CMOS_RTC;

/// FADT reset register: the i8042 command port ...
const RESET_PORT: u16 = 0x64;
/// ... and the i8042 "pulse CPU reset line" command written to it.
const RESET_VALUE: u8 = 0xfe;

/// A virtio-mmio device the guest should discover through the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest physical base address of the register window; must lie below 4 GiB.
    pub addr: u64,
    /// Length of the register window in bytes.
    pub len: u64,
    /// IO-APIC input (GSI) the device interrupts on, edge-triggered and active high.
    pub irq: u32,
}

/// What the ACPI tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; they get APIC IDs `0..num_cpus`.
    pub num_cpus: u8,
    /// virtio-mmio devices, named `\_SB_.V000`, `\_SB_.V001`, ... in this order.
    pub mmio_devices: &'a [MmioDevice],
}

/// Errors from building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// `num_cpus` was 0.
    #[error("the VM needs at least one vCPU")]
    NoCpus,
    /// More devices than there are `Vxxx` names.
    #[error("{0} virtio-mmio devices requested, at most {max} can be named", max = dsdt::MAX_DEVICES)]
    TooManyDevices(usize),
    /// A device window that is empty, wraps or does not fit below 4 GiB.
    #[error("virtio-mmio window {addr:#x}+{len:#x} must be non-empty and end below 4 GiB")]
    InvalidMmioRange {
        /// Base address of the window.
        addr: u64,
        /// Length of the window.
        len: u64,
    },
    /// A device interrupt that is not an input of the IO-APIC.
    #[error("GSI {0} is not an IO-APIC input (0..={max})", max = madt::IOAPIC_PINS - 1)]
    InvalidIrq(u32),
    /// The tables need more room than the ACPI area has.
    #[error("ACPI tables need {needed} bytes, the ACPI area has {available}")]
    TablesTooLarge {
        /// Bytes needed from `ACPI_START`.
        needed: u64,
        /// Size of the ACPI area.
        available: u64,
    },
    /// Writing the tables into guest memory failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
}

/// Builds RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT and writes them into guest
/// memory in `[ACPI_START, ACPI_START + ACPI_SIZE)`. Returns the guest physical address of
/// the RSDP, which is `ACPI_START`.
///
/// Nothing is written unless every table is valid and fits.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let dsdt = dsdt::build(cfg.mmio_devices)?;
    let madt = madt::build(u32::from(cfg.num_cpus));

    // Place the tables first: the FADT points at the DSDT, the XSDT at the FADT and MADT,
    // and the RSDP at the XSDT.
    let mut next = ACPI_START;
    let mut place = |len: usize| {
        let addr = next.next_multiple_of(TABLE_ALIGN);
        next = addr + len as u64;
        addr
    };
    let rsdp_addr = place(Rsdp::len());
    let xsdt_addr = place(xsdt_len(2));
    let fadt_addr = place(FADT::len());
    let madt_addr = place(madt.len());
    let dsdt_addr = place(dsdt.len());
    let needed = next - ACPI_START;
    if needed > ACPI_SIZE {
        return Err(AcpiError::TablesTooLarge {
            needed,
            available: ACPI_SIZE,
        });
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);

    let tables = [
        (rsdp_addr, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, to_bytes(&xsdt)),
        (fadt_addr, build_fadt(dsdt_addr)),
        (madt_addr, madt),
        (dsdt_addr, dsdt),
    ];
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(GuestAddress(rsdp_addr))
}

/// Size of an XSDT with `entries` table pointers.
fn xsdt_len(entries: usize) -> usize {
    36 + entries * 8
}

/// Serializes a table built by `acpi_tables`.
fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The FADT (ACPI 6.5, revision 6.5) of a hardware-reduced platform.
///
/// Hardware-reduced means the PM1/PM2/GPE blocks, PM timer, SCI, SMI command and FACS are
/// all absent, which is what a microVM has. Besides that the FADT says:
/// - PWR_BUTTON and SLP_BUTTON: there are no fixed-feature buttons;
/// - RESET_REG_SUP with RESET_REG = byte write of 0xfe to I/O port 0x64, so Linux's default
///   reboot method (ACPI, then keyboard controller) resets the VM through the i8042;
/// - IAPC_BOOT_ARCH as described at [`IAPC_BOOT_ARCH`];
/// - SLEEP_CONTROL_REG/SLEEP_STATUS_REG = byte ports 0x600/0x601, so that with the DSDT's
///   `_S5_` object Linux powers off through ACPI (the VMM ends the VM on that write);
/// - X_DSDT only (the 32-bit DSDT field stays 0, as ACPI 2.0+ allows).
fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(RESET_PORT),
    );
    fadt.reset_value = RESET_VALUE;
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    fadt.sleep_control_reg = io_byte(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte(ACPI_SLEEP_STATUS_PORT);
    to_bytes(&fadt.finalize())
}

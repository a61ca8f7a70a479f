//! The DSDT: AML describing the devices a guest cannot find on its own.
//!
//! ```text
//! Name (_S5_, Package { 5, 0 })   soft-off sleep type, written to the FADT sleep control port
//! Scope (\_SB_) {
//!     Device (COM1) { _HID PNP0501, _UID 0, _CRS { IO 0x3f8-0x3ff, Interrupt {4} } }
//!     Device (V000) { _HID "LNRO0005", _UID 0, _CRS { Memory32Fixed, Interrupt {irq} } }
//!     ...
//! }
//! ```
//!
//! `LNRO0005` is the ACPI ID Linux's virtio_mmio driver matches. Interrupts use the extended
//! descriptor: consumer, edge-triggered, active high, exclusive, which is what an irqfd
//! pulsing an IO-APIC pin delivers. The legacy COM1 IRQ uses the same form; Linux takes the
//! trigger and polarity from it as is.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::madt::IOAPIC_PINS;
use super::{AcpiError, MmioDevice, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{ACPI_S5_SLEEP_TYPE, COM1_IRQ};

/// Device names are `V` plus three hex digits.
pub(super) const MAX_DEVICES: usize = 0x1000;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
const COM1_PORT: u16 = 0x3f8;
const COM1_PORTS: u8 = 8;

/// Builds the DSDT for COM1 and `devices`, after checking each device can be described.
pub(super) fn build(devices: &[MmioDevice]) -> Result<Vec<u8>, AcpiError> {
    if devices.len() > MAX_DEVICES {
        return Err(AcpiError::TooManyDevices(devices.len()));
    }
    let mut sb = Vec::new();
    sb.extend_from_slice(&com1());
    for (i, dev) in devices.iter().enumerate() {
        sb.extend_from_slice(&virtio_mmio(i, dev)?);
    }
    let mut aml = Vec::new();
    let s5 = Package::new(vec![&ACPI_S5_SLEEP_TYPE, &0u8]);
    Name::new(Path::new("_S5_"), &s5).to_aml_bytes(&mut aml);
    aml.extend_from_slice(&Scope::raw(Path::new("\\_SB_"), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    Ok(dsdt.as_slice().to_vec())
}

/// An extended interrupt descriptor: consumer, edge, active high, exclusive.
fn edge_irq(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// `Device (COM1)`: the 16550 at 0x3f8 on IRQ 4.
fn com1() -> Vec<u8> {
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORTS);
    let irq = edge_irq(COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&ports, &irq]);
    let hid = EISAName::new("PNP0501");
    let mut aml = Vec::new();
    Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(&mut aml);
    aml
}

/// The error for a window `Memory32Fixed` cannot describe.
fn invalid_range(dev: &MmioDevice) -> AcpiError {
    AcpiError::InvalidMmioRange {
        addr: dev.addr,
        len: dev.len,
    }
}

/// `Device (Vxxx)` for the `index`-th virtio-mmio device.
fn virtio_mmio(index: usize, dev: &MmioDevice) -> Result<Vec<u8>, AcpiError> {
    let (Ok(base), Ok(len)) = (u32::try_from(dev.addr), u32::try_from(dev.len)) else {
        return Err(invalid_range(dev));
    };
    if len == 0 || u64::from(base) + u64::from(len) > 1 << 32 {
        return Err(invalid_range(dev));
    }
    if dev.irq >= IOAPIC_PINS {
        return Err(AcpiError::InvalidIrq(dev.irq));
    }
    let window = Memory32Fixed::new(true, base, len);
    let irq = edge_irq(dev.irq);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u64;
    let name = format!("V{index:03X}");
    let mut aml = Vec::new();
    Device::new(
        Path::new(&name),
        vec![
            &Name::new(Path::new("_HID"), &"LNRO0005"),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(&mut aml);
    Ok(aml)
}
